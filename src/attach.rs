//! Step 2: attach the claimed id's ENI and EBS volume to this instance, taking them over from a
//! dead predecessor, never from a live one.
//!
//! Both are found by the tag contract in this instance's AZ (exactly one of each). For each,
//! observe who holds it, decide ([`decide`], pure), apply, and look again until it is attached
//! here: already ours, nothing to do; free, attach; held by a live instance, wait with backoff
//! until the boot deadline, then fail naming the holder. A dead holder is never rushed:
//!
//! * shutting down: its OS may still be flushing Kafka's segments, and EC2 refuses a detach
//!   meanwhile; wait for EC2 to release it once the instance is terminated (`released`);
//! * terminated: EC2 releases what it held by itself; only a holder that still holds it after
//!   `resources.release_grace_seconds` is force-detached (`took_over`), also when its
//!   detach is still in flight then (EC2 documents detaches stuck until forced);
//! * not listed by EC2: a new instance may not be visible yet (eventual consistency), so it
//!   must stay unlisted for `resources.gone_after_seconds` before it is taken for gone.
//!
//! The ENI and the volume go concurrently. Every retry backs off; a permanent refusal (an
//! invalid device name, an attachment point in use by another volume) fails at once. A rerun
//! on a finished node only describes: no mutating call.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::aws::Clients;
use crate::aws::ec2::{Liveness, Mutation, Resource, ResourceKind as Kind};
use crate::aws::imds::Identity;
use crate::aws::{is_transient, retry_transient};
use crate::backoff::Backoff;
use crate::claim::Claim;
use crate::config::Settings;

/// Who holds a resource now, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    /// This instance; the attachment's state (attaching, attached, detaching).
    Me(String),
    /// Another instance: its id, the attachment's state, and the instance's state
    /// (`None` = gone from EC2).
    Other {
        instance: String,
        attachment: String,
        instance_state: Option<String>,
    },
}

/// What to do next about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Done,
    Attach,
    /// Wait for an attachment or detachment in flight.
    Wait(String),
    /// The holder is dead: detach by force.
    ForceDetach {
        holder: String,
        why: String,
    },
    /// The holder lives: never steal.
    HolderAlive {
        holder: String,
        state: String,
    },
}

/// How long a dead holder is given before it is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// A terminated holder: time for EC2 to release the resource by itself.
    pub release_grace: Duration,
    /// A holder EC2 does not list: time before it is taken for gone rather than not yet
    /// visible.
    pub gone_after: Duration,
}

/// Decides the next action for one resource, given how long the holder has been seen as it is
/// now (`seen_for`, by this process's monotonic clock). Pure.
pub fn decide(holder: &Holder, seen_for: Duration, patience: &Patience) -> Action {
    match holder {
        Holder::Nobody => Action::Attach,
        Holder::Me(state) if state == "attached" => Action::Done,
        Holder::Me(state) => Action::Wait(format!("{state} here")),
        // A detach in flight is waited for, except from a dead holder past the grace: EC2
        // documents a detach that can stay "busy while detaching" indefinitely until it is
        // forced (EC2 API Reference, DetachVolume), and no one is left to unmount it.
        Holder::Other {
            instance,
            attachment,
            instance_state,
        } if attachment == "detaching"
            && (seen_for < patience.release_grace
                || matches!(Liveness::of(instance_state.as_deref()), Liveness::Alive(_))) =>
        {
            Action::Wait(format!("detaching from {instance}"))
        }
        Holder::Other {
            instance,
            instance_state,
            ..
        } => match Liveness::of(instance_state.as_deref()) {
            Liveness::Alive(s) => Action::HolderAlive {
                holder: instance.clone(),
                state: s,
            },
            Liveness::Dead(s) if s == "shutting-down" => Action::Wait(format!(
                "{instance} is shutting down; EC2 releases it once the instance is terminated"
            )),
            Liveness::Dead(s) if s == "gone" => {
                if seen_for >= patience.gone_after {
                    Action::ForceDetach {
                        holder: instance.clone(),
                        why: format!(
                            "EC2 has not listed its instance for {}s",
                            seen_for.as_secs()
                        ),
                    }
                } else {
                    Action::Wait(format!(
                        "EC2 does not list {instance}: not taken for gone before {}s (it may \
                         be new and not visible yet)",
                        patience.gone_after.as_secs()
                    ))
                }
            }
            Liveness::Dead(s) => {
                if seen_for >= patience.release_grace {
                    Action::ForceDetach {
                        holder: instance.clone(),
                        why: format!(
                            "its instance is {s} and EC2 has not released it for {}s",
                            seen_for.as_secs()
                        ),
                    }
                } else {
                    Action::Wait(format!("{instance} is {s}; waiting for EC2 to release it"))
                }
            }
        },
    }
}

/// Attach failures a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{resource} is attached to {holder}, which is {state}: not taking it")]
    InUse {
        resource: String,
        holder: String,
        state: String,
    },
    #[error("{0}")]
    NotFound(String),
}

impl AttachError {
    pub fn kind(&self) -> &'static str {
        match self {
            AttachError::InUse { .. } => "resource_in_use",
            AttachError::NotFound(_) => "resource_not_found",
        }
    }
}

/// What the step did for one resource.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attached {
    pub id: String,
    /// already | attached | released (EC2 released it from its dead holder, then attached
    /// here) | took_over (force-detached from a dead holder that kept it past the grace)
    pub how: String,
    /// ENI: its private IPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// ENI: its MAC address, when the claim's look handed it over (IMDS is then asked for
    /// that one interface only).
    #[serde(skip)]
    pub mac: Option<String>,
    /// Its tags as EC2 last described them, handed to the mount step of the same boot (a
    /// volume's state tag) so that it does not ask again.
    #[serde(skip)]
    pub tags: BTreeMap<String, String>,
}

/// The outcome of the step.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub broker_id: u32,
    pub eni: Option<Attached>,
    pub volume: Option<Attached>,
    pub elapsed_ms: u64,
}

/// (id, AZ) of every resource of `kind` tagged for `id`, in `az` or anywhere.
async fn find(
    settings: &Settings,
    clients: &Clients,
    kind: Kind,
    id: u32,
    az: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let tags = settings.resource_tags(Some(id));
    Ok(clients
        .ec2
        .tagged(kind, &tags, az)
        .await?
        .into_iter()
        .map(|r| (r.resource.id, r.az))
        .collect())
}

/// Exactly one resource of `kind` for `id` in this AZ, or an error listing what was found.
async fn find_one(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    kind: Kind,
    id: u32,
) -> Result<String> {
    let here = find(settings, clients, kind, id, Some(&me.az)).await?;
    if here.len() == 1 {
        return Ok(here[0].0.clone());
    }
    let everywhere = find(settings, clients, kind, id, None).await?;
    let list: Vec<String> = everywhere
        .iter()
        .map(|(r, az)| format!("{r} in {az}"))
        .collect();
    let tag = format!("{}={}", settings.tags.id_key, settings.tags.format_id(id));
    let found = if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    };
    Err(AttachError::NotFound(format!(
        "expected exactly one {} tagged {tag} for cluster {} in {}; found {found}",
        kind.name(),
        settings.cluster.name,
        me.az
    ))
    .into())
}

/// The resource's holder and, for an ENI, its attachment id and private IPs, from a fresh
/// look or from one handed over.
async fn observe(
    clients: &Clients,
    me: &Identity,
    kind: Kind,
    resource: &str,
    handed: Option<Resource>,
) -> Result<(
    Holder,
    Option<String>,
    Vec<String>,
    BTreeMap<String, String>,
)> {
    let r = match handed {
        Some(r) => r,
        None => clients.ec2.describe(kind, resource).await?,
    };
    let (holder, attachment) = match r.attachment {
        None => (Holder::Nobody, None),
        Some(a) if a.instance == me.instance_id => (Holder::Me(a.state), a.id),
        Some(a) => {
            let instance_state = clients.ec2.instance_state(&a.instance).await?;
            (
                Holder::Other {
                    instance: a.instance,
                    attachment: a.state,
                    instance_state,
                },
                a.id,
            )
        }
    };
    Ok((holder, attachment, r.ips, r.tags))
}

async fn attach_call(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    kind: Kind,
    resource: &str,
) -> Result<Mutation> {
    let res = &settings.resources;
    match kind {
        Kind::Eni => {
            clients
                .ec2
                .attach_eni(resource, &me.instance_id, res.eni_device_index as i32)
                .await
        }
        Kind::Volume => {
            clients
                .ec2
                .attach_volume(resource, &me.instance_id, &res.volume_device)
                .await
        }
    }
}

async fn force_detach(
    clients: &Clients,
    kind: Kind,
    resource: &str,
    attachment: Option<&str>,
    holder: &str,
) -> Result<Mutation> {
    match kind {
        Kind::Eni => {
            let aid = attachment.with_context(|| format!("{resource} has no attachment id"))?;
            clients.ec2.force_detach_eni(resource, aid, holder).await
        }
        Kind::Volume => clients.ec2.force_detach_volume(resource, holder).await,
    }
}

/// How long an attach EC2 accepted may take to show in Describe* before it is issued again.
const ATTACH_SHOWS_WITHIN: Duration = Duration::from_secs(10);

/// One resource to bring here.
struct Target<'a> {
    kind: Kind,
    id: &'a str,
    /// How EC2 described it moments ago in this boot (the claim's look), taken as the first
    /// observation.
    first: Option<Resource>,
    /// Notified when this instance sees it arrive (the volume's block device, the ENI in
    /// IMDS): proof that it is attached here, sooner than Describe* says so.
    arrived: Option<&'a tokio::sync::Notify>,
}

/// Brings one resource to "attached here".
async fn converge(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    target: Target<'_>,
    deadline: Instant,
    dry_run: bool,
) -> Result<Attached> {
    let Target {
        kind,
        id: resource,
        mut first,
        arrived,
    } = target;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), deadline);
    // An attach or detach in flight usually completes within seconds: poll it closely for a
    // while (a few calls a second), then fall back to the ordinary backoff.
    let close_watch = || {
        Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(150),
            deadline.min(Instant::now() + Duration::from_secs(5)),
        )
    };
    let mut inflight = close_watch();
    let mut how = "already";
    let patience = Patience {
        release_grace: settings.resources.release_grace,
        gone_after: settings.resources.gone_after,
    };
    // The holder as last seen and since when it has looked so: "dead" is a judgement over
    // time, never one answer (EC2 is eventually consistent).
    let mut seen: Option<(Holder, Instant)> = None;
    let mut saw_dead_holder = false;
    // When EC2 last accepted our attach: DescribeVolumes may still say "available" for a
    // moment (eventual consistency), which is no reason to attach again.
    let mut accepted: Option<Instant> = None;
    loop {
        let step = async {
            let (holder, attachment, ips, tags) =
                observe(clients, me, kind, resource, first.take()).await?;
            let since = match &seen {
                Some((h, since)) if *h == holder => *since,
                _ => {
                    seen = Some((holder.clone(), Instant::now()));
                    Instant::now()
                }
            };
            if let Holder::Other { instance_state, .. } = &holder
                && matches!(Liveness::of(instance_state.as_deref()), Liveness::Dead(_))
            {
                saw_dead_holder = true;
            }
            let action = match decide(&holder, since.elapsed(), &patience) {
                Action::Attach if accepted.is_some_and(|t| t.elapsed() < ATTACH_SHOWS_WITHIN) => {
                    Action::Wait("EC2 accepted the attach; it does not show yet".into())
                }
                action => action,
            };
            tracing::debug!(resource, ?holder, ?action, "attach plan");
            Ok::<_, anyhow::Error>((action, attachment, ips, tags))
        }
        .await;
        let (action, attachment, ips, tags) = match step {
            Ok(v) => v,
            Err(e) if is_transient(&e) => {
                tracing::warn!(resource, error = %format!("{e:#}"), "retrying");
                if !backoff.wait().await {
                    return Err(e);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if dry_run {
            let said = match &action {
                Action::Done => "already attached here".to_string(),
                Action::Attach => "would attach".to_string(),
                Action::Wait(w) => format!("would wait: {w}"),
                Action::ForceDetach { holder, why } => {
                    format!("would force-detach from {holder} ({why}) and attach")
                }
                Action::HolderAlive { holder, state } => {
                    format!("would wait for {holder} ({state}) to let go")
                }
            };
            return Ok(Attached {
                id: resource.to_string(),
                how: said,
                ips,
                mac: None,
                tags,
            });
        }
        let result = match &action {
            Action::Done => {
                return Ok(Attached {
                    id: resource.to_string(),
                    how: how.to_string(),
                    ips,
                    mac: None,
                    tags,
                });
            }
            Action::Attach => {
                if how == "already" {
                    how = if saw_dead_holder {
                        "released"
                    } else {
                        "attached"
                    };
                }
                tracing::info!(resource, "attaching");
                // Applied or refused (someone moved first), the next look comes after a
                // pause, or not at all when this instance sees the resource arrive first (its
                // block device, the ENI in IMDS): an attach takes EC2 a moment, and a Describe
                // at once would only say "attaching".
                attach_call(settings, clients, me, kind, resource)
                    .await
                    .map(|m| {
                        if m == Mutation::Applied {
                            accepted = Some(Instant::now());
                        }
                        true
                    })
            }
            Action::ForceDetach { holder, why } => {
                how = "took_over";
                tracing::info!(resource, holder = %holder, reason = %why, "force-detaching from a dead holder");
                force_detach(clients, kind, resource, attachment.as_deref(), holder)
                    .await
                    .map(|_| true)
            }
            Action::Wait(why) => {
                tracing::debug!(resource, reason = %why, "waiting");
                Ok(true)
            }
            Action::HolderAlive { holder, state } => {
                tracing::info!(resource, holder = %holder, state = %state, "held by a live instance; waiting");
                if !backoff.wait().await {
                    return Err(AttachError::InUse {
                        resource: resource.to_string(),
                        holder: holder.clone(),
                        state: state.clone(),
                    }
                    .into());
                }
                Ok(false)
            }
        };
        match result {
            Ok(true) => {
                let pause = async { inflight.wait().await || backoff.wait().await };
                let seen_here = async {
                    match arrived {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    more = pause => if !more {
                        bail!("{resource} is not attached here at the boot deadline ({action:?})");
                    },
                    () = seen_here => {
                        tracing::debug!(resource, "arrived here");
                        return Ok(Attached {
                            id: resource.to_string(),
                            how: how.to_string(),
                            ips,
                            mac: None,
                            tags,
                        });
                    }
                }
            }
            Ok(false) => {}
            Err(e) if is_transient(&e) => {
                if !backoff.wait().await {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the claim the claim step journalled.
pub fn claimed(settings: &Settings) -> Result<Claim> {
    crate::journal::read(&settings.paths.state_dir, "claim")
}

/// Notified when this instance sees its ENI / volume arrive (see [`Target::arrived`]).
#[derive(Debug, Default)]
pub struct Arrivals {
    pub eni: tokio::sync::Notify,
    pub volume: tokio::sync::Notify,
}

impl Arrivals {
    fn of(&self, kind: Kind) -> &tokio::sync::Notify {
        match kind {
            Kind::Eni => &self.eni,
            Kind::Volume => &self.volume,
        }
    }
}

/// What the attach step will attach, as the claim of the same boot found it (ids, an ENI's
/// addresses, tags), for the steps that wait for the resources to arrive here (mount, route)
/// to start while the attach is under way. `None` when the claim did not find every wanted
/// resource (the attach step looks for itself then).
pub fn expected(settings: &Settings, claim: &Claim) -> Option<Attachment> {
    let one = |kind: Kind, wanted: bool| -> Option<Option<Attached>> {
        if !wanted {
            return Some(None);
        }
        let r = claim.resources.of(kind)?;
        Some(Some(Attached {
            id: r.id.clone(),
            how: "attaching".into(),
            ips: r.ips.clone(),
            mac: r.mac.clone(),
            tags: r.tags.clone(),
        }))
    };
    Some(Attachment {
        broker_id: claim.id,
        eni: one(Kind::Eni, settings.resources.eni)?,
        volume: one(Kind::Volume, settings.resources.volume)?,
        elapsed_ms: 0,
    })
}

/// Runs the attach step for the claimed id (`handed` by the claim step of the same boot, else
/// read from its journal); every wait ends by `deadline`. `arrivals`, when given, end the wait
/// for an attach in flight as soon as this instance sees the resource.
pub async fn run(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    handed: Option<&Claim>,
    arrivals: Option<&Arrivals>,
    dry_run: bool,
    deadline: Instant,
) -> Result<Attachment> {
    let started = Instant::now();
    let claim = match handed {
        Some(c) => c.clone(),
        None => claimed(settings)?,
    };
    let found = &claim.resources;
    if claim.instance_id != me.instance_id {
        bail!(
            "{} holds a claim of {}, not of this instance {}: run `kafka-agent claim`",
            settings.paths.state_dir.join("claim.json").display(),
            claim.instance_id,
            me.instance_id
        );
    }
    let id = claim.id;
    let one = |kind: Kind, wanted: bool| async move {
        if !wanted {
            return Ok(None);
        }
        // The claim's eligibility check described it a moment ago in this boot: that look is
        // the first observation, unless it says the resource is already here (a rerun), which
        // is confirmed afresh before anything is skipped. Else find it.
        let (resource, first) = match found.of(kind) {
            Some(r) => {
                let here = r
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.instance == me.instance_id);
                (r.id.clone(), (!here).then(|| r.clone()))
            }
            None => (
                retry_transient(deadline, || find_one(settings, clients, me, kind, id)).await?,
                None,
            ),
        };
        let target = Target {
            kind,
            id: &resource,
            first,
            arrived: arrivals.map(|a| a.of(kind)),
        };
        converge(settings, clients, me, target, deadline, dry_run)
            .await
            .map(Some)
    };
    // The volume's call goes out first: after it come the device, the mount and the identity
    // gate, the longer road of the two (join! polls its futures in order).
    let (volume, eni) = tokio::join!(
        one(Kind::Volume, settings.resources.volume),
        one(Kind::Eni, settings.resources.eni),
    );
    let out = Attachment {
        broker_id: id,
        eni: eni?,
        volume: volume?,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    if !dry_run {
        crate::journal::record(&settings.paths.state_dir, "attach", &out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(state: Option<&str>, attachment: &str) -> Holder {
        Holder::Other {
            instance: "i-old".into(),
            attachment: attachment.into(),
            instance_state: state.map(str::to_string),
        }
    }

    const PATIENCE: Patience = Patience {
        release_grace: Duration::from_secs(60),
        gone_after: Duration::from_secs(300),
    };

    fn now(holder: &Holder) -> Action {
        decide(holder, Duration::ZERO, &PATIENCE)
    }

    #[test]
    fn never_steal_from_the_living() {
        for s in ["running", "pending", "stopping", "stopped"] {
            let long = Duration::from_secs(86_400);
            assert!(
                matches!(
                    decide(&other(Some(s), "attached"), long, &PATIENCE),
                    Action::HolderAlive { .. }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn a_shutting_down_holder_is_waited_for_however_long() {
        let long = Duration::from_secs(86_400);
        assert!(matches!(
            decide(&other(Some("shutting-down"), "attached"), long, &PATIENCE),
            Action::Wait(_)
        ));
    }

    #[test]
    fn a_terminated_holder_is_given_time_for_ec2_to_release_it() {
        let held = other(Some("terminated"), "attached");
        assert!(matches!(now(&held), Action::Wait(_)));
        assert!(matches!(
            decide(&held, PATIENCE.release_grace, &PATIENCE),
            Action::ForceDetach { .. }
        ));
    }

    #[test]
    fn an_unlisted_holder_is_gone_only_after_staying_unlisted() {
        let held = other(None, "attached");
        assert!(matches!(now(&held), Action::Wait(_)));
        assert!(matches!(
            decide(&held, PATIENCE.release_grace, &PATIENCE),
            Action::Wait(_)
        ));
        assert!(matches!(
            decide(&held, PATIENCE.gone_after, &PATIENCE),
            Action::ForceDetach { .. }
        ));
    }

    #[test]
    fn a_detach_that_stays_in_flight_from_a_dead_holder_is_forced_after_the_grace() {
        let stuck = other(Some("terminated"), "detaching");
        assert!(matches!(
            decide(&stuck, PATIENCE.release_grace, &PATIENCE),
            Action::ForceDetach { .. }
        ));
        // From a live holder it is its own detach: waited for, never forced.
        assert!(matches!(
            decide(
                &other(Some("running"), "detaching"),
                PATIENCE.gone_after * 10,
                &PATIENCE
            ),
            Action::Wait(_)
        ));
    }

    #[test]
    fn in_flight_changes_are_waited_for() {
        assert!(matches!(
            now(&other(Some("terminated"), "detaching")),
            Action::Wait(_)
        ));
        assert!(matches!(
            now(&Holder::Me("attaching".into())),
            Action::Wait(_)
        ));
        assert_eq!(now(&Holder::Me("attached".into())), Action::Done);
        assert_eq!(now(&Holder::Nobody), Action::Attach);
    }
}
