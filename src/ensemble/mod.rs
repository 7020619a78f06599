//! The ZooKeeper role: who the ensemble's members are, whether a quorum of them serves, and
//! whether this node joins it, bootstraps a fresh ensemble, resumes on its own data or waits.
//!
//! Everything here is a pure function of what was observed: the peers' answers to `srvr`
//! ([`fourlw`]), the membership read from `/zookeeper/config` ([`EnsembleConfig`]), which
//! myids have an instance in service, and which volumes hold ZooKeeper data. [`decide`]
//! turns that into a [`Plan`]; [`removals`] says which dead members a reconfig may drop;
//! [`watchdog_may_mark`] says whether marking a member unhealthy keeps a quorum.
//!
//! Two rules hold throughout: data is never wiped, and a new ensemble is never started while
//! any member may hold data (that would fork the ensemble's history).

pub mod fourlw;
pub mod step;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};

pub use crate::aws::ec2::Liveness;
use fourlw::{Answer, Mode};

/// How a member takes part: a participant votes (and can lead), an observer only follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    Participant,
    Observer,
}

impl PeerRole {
    /// The word ZooKeeper uses in a `server.N=` line.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Participant => "participant",
            PeerRole::Observer => "observer",
        }
    }
}

/// One `server.N=` entry: a member of the ensemble and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The myid.
    pub id: u32,
    /// The address peers reach it on (its per-myid ENI's address).
    pub host: IpAddr,
    /// Followers connect to the leader here (2888 by convention).
    pub quorum_port: u16,
    /// Leader election runs here (3888 by convention).
    pub election_port: u16,
    pub role: PeerRole,
    /// Where clients connect, as ZooKeeper reports it: `;2181` reads back as `0.0.0.0:2181`.
    /// None when the line has no client part.
    pub client: Option<SocketAddr>,
}

impl Member {
    pub fn is_voter(&self) -> bool {
        self.role == PeerRole::Participant
    }

    /// Where a client (or a four-letter word) reaches this member: its client address, on the
    /// member's host when the client address is unspecified (`0.0.0.0`, listen everywhere).
    pub fn client_address(&self) -> Option<SocketAddr> {
        self.client.map(|c| {
            if c.ip().is_unspecified() {
                SocketAddr::new(self.host, c.port())
            } else {
                c
            }
        })
    }
}

/// The members of an ensemble, by myid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<u32, Member>,
}

impl Membership {
    /// The membership of `members`; two entries for one myid are an error.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<Self> {
        let mut out = BTreeMap::new();
        for m in members {
            let id = m.id;
            if out.insert(id, m).is_some() {
                bail!("myid {id} appears twice in the membership");
            }
        }
        Ok(Membership { members: out })
    }

    /// The members, lowest myid first.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn get(&self, id: u32) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's myid.
    pub fn ids(&self) -> BTreeSet<u32> {
        self.members.keys().copied().collect()
    }

    /// The voting members' (participants') myids.
    pub fn voters(&self) -> BTreeSet<u32> {
        self.members
            .values()
            .filter(|m| m.is_voter())
            .map(|m| m.id)
            .collect()
    }

    /// How many voters make a quorum: more than half of them (ZooKeeper's `QuorumMaj`).
    pub fn majority(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    /// This membership with `member` added, or replacing the entry of its myid.
    pub fn with(&self, member: Member) -> Membership {
        let mut members = self.members.clone();
        members.insert(member.id, member);
        Membership { members }
    }

    /// This membership without myid `id`.
    pub fn without(&self, id: u32) -> Membership {
        let mut members = self.members.clone();
        members.remove(&id);
        Membership { members }
    }
}

/// The ensemble's configuration as ZooKeeper keeps it in `/zookeeper/config`: the members
/// and the configuration's version (the zxid that committed it). A reconfig conditioned on
/// the version fails if another changed the membership since it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleConfig {
    pub membership: Membership,
    pub version: u64,
}

/// Whether a member's volume holds ZooKeeper data, as far as is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Proven empty: no transaction log and no snapshot past zxid 0.
    Empty,
    /// A transaction log or a snapshot of committed transactions.
    Holds,
    /// Not known (no claim record says, the volume could not be read): never taken as empty.
    Unknown,
}

/// Whether the files of a `dataDir/version-2` directory hold data: any transaction log
/// (`log.<zxid>`), or a snapshot past zxid 0. ZooKeeper 3.8 writes `snapshot.0` (the empty
/// tree) and `acceptedEpoch`/`currentEpoch` on its first start even when it never reaches a
/// quorum, so those alone are not data.
pub fn holds_data<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    names.into_iter().any(|name| {
        if let Some(zxid) = name.strip_prefix("log.") {
            u64::from_str_radix(zxid, 16).is_ok()
        } else if let Some(zxid) = name.strip_prefix("snapshot.") {
            u64::from_str_radix(zxid, 16).is_ok_and(|z| z > 0)
        } else {
            false
        }
    })
}

/// Whether the ZooKeeper data directory `data_dir` (on the mounted volume) holds data; a
/// directory that does not exist holds none.
pub fn volume_holds_data(data_dir: &Path) -> Result<bool> {
    let dir = data_dir.join("version-2");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(holds_data(names.iter().map(String::as_str)))
}

/// What was observed of one expected member (myid 1..N), this node included.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The member this myid is as a participant: its ENI's address and the configured ports.
    pub member: Member,
    /// An instance in service holds this myid's claim.
    pub in_service: bool,
    /// What its client port answered to `srvr`.
    pub answer: Answer,
    /// Whether its volume holds data: for this node, read from the mounted volume; for the
    /// others, what their claim records say.
    pub data: Data,
}

impl Peer {
    /// The member can take part in a bootstrap: an instance is in service and its host
    /// answers on the client port (ZooKeeper not running, or running but without a quorum).
    fn present(&self) -> bool {
        self.in_service && matches!(self.answer, Answer::Refused | Answer::NotServing)
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// This node's myid.
    pub me: u32,
    /// Every expected member, by myid, this node's own entry included.
    pub peers: BTreeMap<u32, Peer>,
    /// `/zookeeper/config` as read from a member that answered `srvr` as serving; None when
    /// none did (or it could not be read).
    pub config: Option<EnsembleConfig>,
}

/// What this node does.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A quorum serves: start on `members` (the current members plus this node) and, when
    /// `add`, add this node as a participant by a reconfig conditioned on `version`.
    Join {
        leader: u32,
        members: Membership,
        version: u64,
        /// This node is not in the current membership (or is there with other addresses).
        add: bool,
    },
    /// No quorum serves, every expected member is present and none holds data: start a fresh
    /// ensemble of `members` (every member computes the same list).
    Bootstrap { members: Membership },
    /// No quorum serves and this node's volume holds data: start on `members` and let
    /// ZooKeeper's election restore the quorum once a majority of the ensemble is back. Not a
    /// fork: ZooKeeper elects only with a majority, and a newer configuration carried by any
    /// peer replaces this one.
    Resume {
        members: Membership,
        /// Why no quorum serves yet, for `status`.
        reason: WaitReason,
    },
    /// Do nothing yet (ZooKeeper is not started) and look again later.
    Wait { reason: WaitReason },
}

/// Why no quorum can be joined and no ensemble started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// This node's myid is not among the expected members.
    NotExpected { me: u32 },
    /// More than one peer answers as leader: a split view, trusted by no one.
    SplitLeaders { leaders: Vec<u32> },
    /// A majority of the voters serve but none of them leads (an election is under way).
    NoLeader { serving: Vec<u32> },
    /// Peers serve but the membership (`/zookeeper/config`) was not read.
    MembershipUnknown { serving: Vec<u32> },
    /// Some members serve, but not a majority of the voting membership.
    NoQuorum { serving: Vec<u32>, voters: Vec<u32> },
    /// No quorum serves and these members hold data: only they can bring the ensemble back;
    /// this node's volume is empty, so it waits for them (or an operator).
    DataHeld { holders: Vec<u32> },
    /// No quorum serves and no data is known, but these members are not present.
    MembersAbsent { absent: Vec<u32> },
    /// No quorum serves and whether these members hold data is unknown.
    DataUnknown { unknown: Vec<u32> },
    /// This member is beyond the initial ensemble (myids 1..=initial): it only joins a
    /// serving ensemble, and none serves.
    JoinsOnly { me: u32, initial: u32 },
}

impl WaitReason {
    /// The stable kind for `status --json`.
    pub fn kind(&self) -> &'static str {
        match self {
            WaitReason::NotExpected { .. } => "not_expected",
            WaitReason::SplitLeaders { .. } => "split_leaders",
            WaitReason::NoLeader { .. } => "no_leader",
            WaitReason::MembershipUnknown { .. } => "membership_unknown",
            WaitReason::NoQuorum { .. } => "no_quorum",
            WaitReason::DataHeld { .. } => "data_held_elsewhere",
            WaitReason::MembersAbsent { .. } => "members_absent",
            WaitReason::DataUnknown { .. } => "data_unknown",
            WaitReason::JoinsOnly { .. } => "joins_only",
        }
    }
}

fn list(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NotExpected { me } => write!(
                f,
                "myid {me} is not one of the ensemble's expected members (cluster.size)"
            ),
            WaitReason::SplitLeaders { leaders } => write!(
                f,
                "members {} each answer as leader: a split view; waiting for one leader",
                list(leaders)
            ),
            WaitReason::NoLeader { serving } => write!(
                f,
                "members {} serve but none leads: waiting for the election to end",
                list(serving)
            ),
            WaitReason::MembershipUnknown { serving } => write!(
                f,
                "members {} serve but /zookeeper/config was not read",
                list(serving)
            ),
            WaitReason::NoQuorum { serving, voters } => write!(
                f,
                "no quorum: {} of the voting members {} serve ({}), a quorum needs {}",
                serving.len(),
                list(voters),
                list(serving),
                voters.len() / 2 + 1
            ),
            WaitReason::DataHeld { holders } => write!(
                f,
                "no quorum serves and members {} hold data: waiting for them (this node's volume is empty; nothing is wiped, no new ensemble is started)",
                list(holders)
            ),
            WaitReason::MembersAbsent { absent } => write!(
                f,
                "no quorum serves and members {} are not present: a fresh ensemble starts only with every member",
                list(absent)
            ),
            WaitReason::JoinsOnly { me, initial } => write!(
                f,
                "myid {me} is beyond the initial ensemble (myids 1 to {initial}): it joins a serving ensemble, and none serves yet"
            ),
            WaitReason::DataUnknown { unknown } => write!(
                f,
                "no quorum serves and whether members {} hold data is unknown: no new ensemble is started",
                list(unknown)
            ),
        }
    }
}

/// The plan for this node.
///
/// **A quorum serves** when, in the membership read from `/zookeeper/config`, more than half
/// of the voting members (participants) answer `srvr` with `Mode: leader` or `Mode:
/// follower`, and exactly one peer answers `Mode: leader`, that one a voter. Observers,
/// standalone servers, members outside the membership (a non-voting follower also says
/// `Mode: follower`) and members that say "not currently serving requests" do not count.
/// Then the plan is [`Plan::Join`].
///
/// Otherwise, in order:
/// - two or more leaders: [`Plan::Wait`] (split view);
/// - peers serve but no quorum: this node [`Plan::Resume`]s if its volume holds data, else
///   waits;
/// - nothing serves: this node resumes if its volume holds data; else it waits while any
///   member holds data, is absent (no instance in service, or its host does not answer on
///   the client port), or may hold data; else every member bootstraps the same ensemble.
pub fn decide(obs: &Observations) -> Plan {
    let Some(me) = obs.peers.get(&obs.me) else {
        return Plan::Wait {
            reason: WaitReason::NotExpected { me: obs.me },
        };
    };
    let modes: BTreeMap<u32, Mode> = obs
        .peers
        .iter()
        .filter_map(|(id, p)| match &p.answer {
            Answer::Serving(s) => Some((*id, s.mode)),
            _ => None,
        })
        .collect();
    let leaders: Vec<u32> = modes
        .iter()
        .filter(|(_, m)| **m == Mode::Leader)
        .map(|(id, _)| *id)
        .collect();
    if leaders.len() > 1 {
        return Plan::Wait {
            reason: WaitReason::SplitLeaders { leaders },
        };
    }
    let expected = || Membership {
        members: obs
            .peers
            .iter()
            .map(|(id, p)| (*id, p.member.clone()))
            .collect(),
    };
    let resume_or_wait = |reason: WaitReason| {
        if me.data == Data::Holds {
            Plan::Resume {
                members: expected(),
                reason,
            }
        } else {
            Plan::Wait { reason }
        }
    };

    if !modes.is_empty() {
        let Some(config) = &obs.config else {
            return Plan::Wait {
                reason: WaitReason::MembershipUnknown {
                    serving: modes.keys().copied().collect(),
                },
            };
        };
        let voters = config.membership.voters();
        let serving: Vec<u32> = modes
            .iter()
            .filter(|(id, m)| voters.contains(id) && matches!(m, Mode::Leader | Mode::Follower))
            .map(|(id, _)| *id)
            .collect();
        if serving.len() < config.membership.majority() {
            return resume_or_wait(WaitReason::NoQuorum {
                serving,
                voters: voters.into_iter().collect(),
            });
        }
        return match leaders.as_slice() {
            [leader] if voters.contains(leader) => Plan::Join {
                leader: *leader,
                members: config.membership.with(me.member.clone()),
                version: config.version,
                add: config.membership.get(obs.me) != Some(&me.member),
            },
            _ => Plan::Wait {
                reason: WaitReason::NoLeader { serving },
            },
        };
    }

    let holders: Vec<u32> = ids_where(obs, |_, p| p.data == Data::Holds);
    if !holders.is_empty() {
        return resume_or_wait(WaitReason::DataHeld { holders });
    }
    let absent = ids_where(obs, |id, p| id != obs.me && !p.present());
    if !absent.is_empty() {
        return Plan::Wait {
            reason: WaitReason::MembersAbsent { absent },
        };
    }
    let unknown = ids_where(obs, |_, p| p.data == Data::Unknown);
    if !unknown.is_empty() {
        return Plan::Wait {
            reason: WaitReason::DataUnknown { unknown },
        };
    }
    Plan::Bootstrap {
        members: expected(),
    }
}

fn ids_where(obs: &Observations, f: impl Fn(u32, &Peer) -> bool) -> Vec<u32> {
    obs.peers
        .iter()
        .filter(|(id, p)| f(**id, p))
        .map(|(id, _)| *id)
        .collect()
}

/// The members a reconfig may remove now, lowest myid first: those whose instance is known
/// to be gone ([`Liveness::Dead`]), never one that is alive or whose instance is unknown (no
/// entry in `instances`). Observers go freely; of the voters, at most as many go as leave
/// the remaining voters a majority of the current voting membership, so a removal never
/// takes the ensemble below a quorum of what it is now (5 voters with 2 dead: both go; with
/// 3 dead: 2 go, the third once the ensemble is smaller).
pub fn removals(membership: &Membership, instances: &BTreeMap<u32, Liveness>) -> Vec<u32> {
    let dead = |id: u32| matches!(instances.get(&id), Some(Liveness::Dead(_)));
    let voters = membership.voters();
    let mut budget = voters.len().saturating_sub(membership.majority());
    let mut out = Vec::new();
    for m in membership.members() {
        if !dead(m.id) {
            continue;
        }
        if m.is_voter() {
            if budget == 0 {
                continue;
            }
            budget -= 1;
        }
        out.push(m.id);
    }
    out
}

/// Whether the watchdog may mark member `me` unhealthy (and so have it replaced): only when
/// the voters serving without it (`serving`: myids answering as leader or follower) are still
/// a quorum of `membership`. A member that does not vote never holds the quorum up.
pub fn watchdog_may_mark(membership: &Membership, serving: &BTreeSet<u32>, me: u32) -> bool {
    let voters = membership.voters();
    if !voters.contains(&me) {
        return true;
    }
    let others = voters
        .iter()
        .filter(|id| **id != me && serving.contains(id))
        .count();
    others >= membership.majority()
}

#[cfg(test)]
mod tests {
    use super::fourlw::Srvr;
    use super::*;
    use std::net::Ipv4Addr;

    fn member(id: u32) -> Member {
        let host = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10 + id as u8));
        Member {
            id,
            host,
            quorum_port: 2888,
            election_port: 3888,
            role: PeerRole::Participant,
            client: Some(SocketAddr::new(host, 2181)),
        }
    }

    fn observer(id: u32) -> Member {
        Member {
            role: PeerRole::Observer,
            ..member(id)
        }
    }

    fn members(ids: &[u32]) -> Membership {
        Membership::new(ids.iter().map(|&i| member(i))).unwrap()
    }

    fn serving(mode: Mode, zxid: u64) -> Answer {
        Answer::Serving(Srvr {
            version: "3.8.0".to_string(),
            mode,
            zxid,
            latency: None,
            connections: Some(1),
            outstanding: Some(0),
            node_count: Some(5),
        })
    }

    fn peer(id: u32, answer: Answer, data: Data) -> Peer {
        Peer {
            member: member(id),
            in_service: true,
            answer,
            data,
        }
    }

    /// Three expected members; `answers[i]` and `data[i]` are myid i+1's. This node is myid 2.
    fn obs(answers: [Answer; 3], data: [Data; 3], config: Option<EnsembleConfig>) -> Observations {
        let peers = answers
            .into_iter()
            .zip(data)
            .enumerate()
            .map(|(i, (a, d))| (i as u32 + 1, peer(i as u32 + 1, a, d)))
            .collect();
        Observations {
            me: 2,
            peers,
            config,
        }
    }

    fn config(ids: &[u32]) -> Option<EnsembleConfig> {
        Some(EnsembleConfig {
            membership: members(ids),
            version: 0x1_0000_0005,
        })
    }

    const HELD: [Data; 3] = [Data::Holds, Data::Holds, Data::Holds];

    #[test]
    fn three_of_three_serving_joins_without_a_reconfig() {
        let o = obs(
            [
                serving(Mode::Follower, 9),
                serving(Mode::Follower, 9),
                serving(Mode::Leader, 9),
            ],
            HELD,
            config(&[1, 2, 3]),
        );
        assert_eq!(
            decide(&o),
            Plan::Join {
                leader: 3,
                members: members(&[1, 2, 3]),
                version: 0x1_0000_0005,
                add: false,
            }
        );
    }

    #[test]
    fn two_of_three_serving_is_a_quorum() {
        // Member 2 (this node) is the replacement: its ZooKeeper is not running yet.
        let o = obs(
            [
                serving(Mode::Leader, 9),
                Answer::Refused,
                serving(Mode::Follower, 9),
            ],
            [Data::Holds, Data::Empty, Data::Holds],
            config(&[1, 2, 3]),
        );
        let Plan::Join {
            leader,
            members: m,
            add,
            ..
        } = decide(&o)
        else {
            panic!("expected a join: {:?}", decide(&o));
        };
        assert_eq!((leader, add), (1, false));
        assert_eq!(m.ids(), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn one_of_three_serving_is_no_quorum() {
        let o = obs(
            [serving(Mode::Leader, 9), Answer::Refused, Answer::TimedOut],
            [Data::Holds, Data::Empty, Data::Unknown],
            config(&[1, 2, 3]),
        );
        let plan = decide(&o);
        assert_eq!(
            plan,
            Plan::Wait {
                reason: WaitReason::NoQuorum {
                    serving: vec![1],
                    voters: vec![1, 2, 3],
                },
            }
        );
        let Plan::Wait { reason } = plan else {
            unreachable!()
        };
        assert_eq!(reason.kind(), "no_quorum");
        assert!(reason.to_string().contains("a quorum needs 2"), "{reason}");
    }

    #[test]
    fn a_majority_without_a_leader_waits() {
        let o = obs(
            [
                serving(Mode::Follower, 9),
                Answer::Refused,
                serving(Mode::Follower, 9),
            ],
            HELD,
            config(&[1, 2, 3]),
        );
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::NoLeader {
                    serving: vec![1, 3]
                },
            }
        );
    }

    #[test]
    fn two_leaders_are_a_split_view() {
        let o = obs(
            [
                serving(Mode::Leader, 9),
                Answer::Refused,
                serving(Mode::Leader, 0x2_0000_0001),
            ],
            HELD,
            config(&[1, 2, 3]),
        );
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::SplitLeaders {
                    leaders: vec![1, 3]
                },
            }
        );
    }

    #[test]
    fn serving_without_the_membership_waits() {
        let o = obs(
            [
                serving(Mode::Leader, 9),
                Answer::Refused,
                serving(Mode::Follower, 9),
            ],
            HELD,
            None,
        );
        assert!(matches!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::MembershipUnknown { .. }
            }
        ));
    }

    #[test]
    fn fresh_members_all_present_bootstrap_the_same_ensemble() {
        let o = obs(
            [Answer::NotServing, Answer::Refused, Answer::Refused],
            [Data::Empty; 3],
            None,
        );
        assert_eq!(
            decide(&o),
            Plan::Bootstrap {
                members: members(&[1, 2, 3])
            }
        );
        // Member 1 computes the same list.
        let mut o1 = o.clone();
        o1.me = 1;
        assert_eq!(decide(&o1), decide(&o));
    }

    #[test]
    fn no_bootstrap_when_another_member_holds_data() {
        let o = obs(
            [Answer::Refused, Answer::Refused, Answer::Refused],
            [Data::Empty, Data::Empty, Data::Holds],
            None,
        );
        let plan = decide(&o);
        assert_eq!(
            plan,
            Plan::Wait {
                reason: WaitReason::DataHeld { holders: vec![3] },
            }
        );
    }

    #[test]
    fn this_node_holding_data_resumes_instead_of_bootstrapping() {
        // Two of three down: this node restarts on its data and lets the election wait for
        // the others; it neither wipes nor starts a new ensemble.
        let o = obs(
            [Answer::TimedOut, Answer::Refused, Answer::TimedOut],
            [Data::Unknown, Data::Holds, Data::Unknown],
            None,
        );
        assert_eq!(
            decide(&o),
            Plan::Resume {
                members: members(&[1, 2, 3]),
                reason: WaitReason::DataHeld { holders: vec![2] },
            }
        );
    }

    #[test]
    fn no_bootstrap_without_every_member() {
        let mut o = obs(
            [Answer::Refused, Answer::Refused, Answer::TimedOut],
            [Data::Empty; 3],
            None,
        );
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::MembersAbsent { absent: vec![3] },
            }
        );
        // Answering is not enough: the myid needs an instance in service.
        o.peers.get_mut(&3).unwrap().answer = Answer::Refused;
        o.peers.get_mut(&1).unwrap().in_service = false;
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::MembersAbsent { absent: vec![1] },
            }
        );
    }

    #[test]
    fn no_bootstrap_while_data_is_unknown() {
        let o = obs(
            [Answer::Refused, Answer::Refused, Answer::Refused],
            [Data::Empty, Data::Empty, Data::Unknown],
            None,
        );
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::DataUnknown { unknown: vec![3] },
            }
        );
    }

    #[test]
    fn a_member_removed_by_reconfig_joins_back_with_a_reconfig() {
        // Member 2 was removed while its instance was replaced: the membership is {1, 3}.
        let o = obs(
            [
                serving(Mode::Leader, 9),
                Answer::Refused,
                serving(Mode::Follower, 9),
            ],
            [Data::Holds, Data::Empty, Data::Holds],
            config(&[1, 3]),
        );
        assert_eq!(
            decide(&o),
            Plan::Join {
                leader: 1,
                members: members(&[1, 2, 3]),
                version: 0x1_0000_0005,
                add: true,
            }
        );
    }

    #[test]
    fn the_quorum_is_counted_on_the_current_membership() {
        // Membership {1, 3}: 1 alone is not a majority of it, though 1 of the 3 expected
        // plus this node would be 2 of 3.
        let o = obs(
            [serving(Mode::Leader, 9), Answer::Refused, Answer::TimedOut],
            [Data::Holds, Data::Empty, Data::Holds],
            config(&[1, 3]),
        );
        assert!(matches!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::NoQuorum { .. }
            }
        ));
    }

    #[test]
    fn non_voters_do_not_make_a_quorum() {
        // 1 leads; 3 says follower but is not in the membership {1, 2, 4} (non-voting), and
        // 2 is an observer there. One voter of three serves.
        let mut o = obs(
            [
                serving(Mode::Leader, 9),
                serving(Mode::Observer, 9),
                serving(Mode::Follower, 9),
            ],
            HELD,
            None,
        );
        o.config = Some(EnsembleConfig {
            membership: Membership::new([member(1), observer(2), member(4), member(5)]).unwrap(),
            version: 7,
        });
        assert_eq!(
            decide(&o),
            Plan::Resume {
                members: members(&[1, 2, 3]),
                reason: WaitReason::NoQuorum {
                    serving: vec![1],
                    voters: vec![1, 4, 5],
                },
            }
        );
    }

    #[test]
    fn a_node_outside_the_expected_members_waits() {
        let mut o = obs(
            [Answer::Refused, Answer::Refused, Answer::Refused],
            HELD,
            None,
        );
        o.me = 4;
        assert_eq!(
            decide(&o),
            Plan::Wait {
                reason: WaitReason::NotExpected { me: 4 },
            }
        );
    }

    fn dead() -> Liveness {
        Liveness::Dead("terminated".to_string())
    }

    fn alive() -> Liveness {
        Liveness::Alive("running".to_string())
    }

    #[test]
    fn removals_take_only_dead_members() {
        let m = members(&[1, 2, 3]);
        let instances = BTreeMap::from([(1, alive()), (2, dead()), (3, alive())]);
        assert_eq!(removals(&m, &instances), vec![2]);
        // Unknown (no entry) is not dead.
        let instances = BTreeMap::from([(1, alive()), (3, alive())]);
        assert!(removals(&m, &instances).is_empty());
        // A stopped instance may run again: it keeps its membership.
        let instances = BTreeMap::from([(1, alive()), (2, Liveness::Alive("stopped".into()))]);
        assert!(removals(&m, &instances).is_empty());
    }

    #[test]
    fn removals_keep_a_majority_of_the_current_voters() {
        let five = members(&[1, 2, 3, 4, 5]);
        let two_dead = BTreeMap::from([
            (1, alive()),
            (2, alive()),
            (3, alive()),
            (4, dead()),
            (5, dead()),
        ]);
        assert_eq!(removals(&five, &two_dead), vec![4, 5]);
        let three_dead = BTreeMap::from([
            (1, alive()),
            (2, alive()),
            (3, dead()),
            (4, dead()),
            (5, dead()),
        ]);
        assert_eq!(removals(&five, &three_dead), vec![3, 4]);
        // Of three voters with two dead, one goes.
        let three = members(&[1, 2, 3]);
        let two_of_three = BTreeMap::from([(1, alive()), (2, dead()), (3, dead())]);
        assert_eq!(removals(&three, &two_of_three), vec![2]);
        // A lone voter is never removed.
        assert!(removals(&members(&[1]), &BTreeMap::from([(1, dead())])).is_empty());
    }

    #[test]
    fn dead_observers_go_whatever_the_voters() {
        let m = Membership::new([member(1), member(2), member(3), observer(4)]).unwrap();
        let instances = BTreeMap::from([(1, alive()), (2, dead()), (3, dead()), (4, dead())]);
        assert_eq!(removals(&m, &instances), vec![2, 4]);
    }

    #[test]
    fn the_watchdog_never_marks_away_the_quorum() {
        let m = members(&[1, 2, 3]);
        // All three serve: marking one leaves two of three.
        assert!(watchdog_may_mark(&m, &BTreeSet::from([1, 2, 3]), 2));
        // This node is not serving, the other two are: still a quorum without it.
        assert!(watchdog_may_mark(&m, &BTreeSet::from([1, 3]), 2));
        // Only 1 and this node serve: marking this node leaves one of three.
        assert!(!watchdog_may_mark(&m, &BTreeSet::from([1, 2]), 2));
        // No quorum at all: replacing a member cannot help and may hurt.
        assert!(!watchdog_may_mark(&m, &BTreeSet::from([1]), 2));
        // An observer never holds the quorum up.
        let with_observer = m.with(observer(4));
        assert!(watchdog_may_mark(&with_observer, &BTreeSet::from([1]), 4));
    }

    #[test]
    fn data_means_a_log_or_a_snapshot_past_zero() {
        // Listings measured on ZooKeeper 3.8.0: a server that never reached a quorum...
        assert!(!holds_data(["acceptedEpoch", "currentEpoch", "snapshot.0"]));
        // ...and one that served.
        assert!(holds_data([
            "acceptedEpoch",
            "currentEpoch",
            "log.100000001",
            "snapshot.0"
        ]));
        assert!(holds_data(["snapshot.200000002"]));
        assert!(!holds_data(["snapshot.0.tmp", "log.x", "myid"]));
        assert!(!holds_data([]));
    }

    #[test]
    fn volume_holds_data_reads_version_2() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!volume_holds_data(dir.path()).unwrap());
        let v2 = dir.path().join("version-2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("snapshot.0"), b"").unwrap();
        assert!(!volume_holds_data(dir.path()).unwrap());
        std::fs::write(v2.join("log.100000001"), b"").unwrap();
        assert!(volume_holds_data(dir.path()).unwrap());
    }

    #[test]
    fn membership_refuses_a_myid_twice() {
        let e = Membership::new([member(1), member(1)]).unwrap_err();
        assert!(e.to_string().contains("myid 1"), "{e}");
    }

    #[test]
    fn majority_counts_voters_only() {
        let m = Membership::new([member(1), member(2), observer(3), observer(4)]).unwrap();
        assert_eq!(m.voters(), BTreeSet::from([1, 2]));
        assert_eq!(m.majority(), 2);
        assert_eq!(members(&[1, 2, 3, 4, 5]).majority(), 3);
        assert_eq!(members(&[1, 2, 3, 4]).majority(), 3);
    }

    #[test]
    fn client_address_takes_the_host_when_unspecified() {
        let mut m = member(1);
        m.client = Some("0.0.0.0:2181".parse().unwrap());
        assert_eq!(m.client_address(), Some("10.0.1.11:2181".parse().unwrap()));
    }
}
