//! The EC2 seam: the narrow questions the boot steps ask of EC2, in the project's own types.
//!
//! Which ENIs and volumes carry these tags (in this AZ), who holds one now, which of these
//! instances are dead, attach / force-detach, tag. SDK types (`Filter`, paginators, builders)
//! stay in this file; claim, attach and mount speak [`Tagged`], [`Resource`] and
//! [`Liveness`]. Liveness has one definition here: [`Liveness::of`].

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, Tag};

use super::{aws_error, is_race};

/// The two kinds of resource an id owns besides its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Eni,
    Volume,
}

impl ResourceKind {
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Eni => "ENI",
            ResourceKind::Volume => "volume",
        }
    }
}

/// A resource found by its tags, as EC2 described it then (its holder too: the attach step
/// of the same boot takes that as its first look instead of asking again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub az: String,
    pub resource: Resource,
}

/// An attachment as EC2 reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub instance: String,
    /// The ENI's attachment id (a detach names it); volumes have none.
    pub id: Option<String>,
    /// attaching | attached | detaching | ...
    pub state: String,
}

/// One ENI or volume as EC2 describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub id: String,
    pub attachment: Option<Attachment>,
    /// An ENI's private IPs (empty for a volume).
    pub ips: Vec<String>,
    /// An ENI's MAC address (how IMDS names it).
    pub mac: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// Instance states in which an instance is dead: it will never run Kafka again.
pub const DEAD_STATES: [&str; 2] = ["terminated", "shutting-down"];

/// Whether an instance still runs, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its state (running, pending, stopping, stopped, ...).
    Alive(String),
    /// terminated, shutting-down, or gone (EC2 no longer lists it).
    Dead(String),
}

/// States of an instance that is not running but may run again (pending: about to;
/// stopping/stopped: until someone starts it, or the ASG replaces it): it keeps its id and
/// resources, and claim and attach both wait for it within the deadline.
pub const RETURNING_STATES: [&str; 3] = ["pending", "stopping", "stopped"];

impl Liveness {
    /// Alive but not running: it may come back (see [`RETURNING_STATES`]).
    pub fn may_come_back(&self) -> bool {
        matches!(self, Liveness::Alive(s) if RETURNING_STATES.contains(&s.as_str()))
    }

    /// The one definition of a dead instance: a [`DEAD_STATES`] state, or none at all (`None`:
    /// EC2 does not list the instance).
    pub fn of(state: Option<&str>) -> Liveness {
        match state {
            None => Liveness::Dead("gone".into()),
            Some(s) if DEAD_STATES.contains(&s) => Liveness::Dead(s.to_string()),
            Some(s) => Liveness::Alive(s.to_string()),
        }
    }
}

/// EC2, asked only what the steps need.
#[derive(Clone, Debug)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
}

fn filter(name: impl Into<String>, values: Vec<String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}

fn tag_map<'a>(tags: impl IntoIterator<Item = &'a Tag>) -> BTreeMap<String, String> {
    tags.into_iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
        .collect()
}

/// What became of a mutating call that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Applied,
    /// Refused because someone moved first or EC2 is busy with the resource (logged): look
    /// again after a pause.
    Refused,
}

/// A mutating call's outcome: applied, refused as a race, or failed (a permanent refusal
/// such as an invalid device name fails at once).
fn tolerate_race<T, E>(
    result: std::result::Result<
        T,
        aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    >,
    doing: &str,
) -> Result<Mutation>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(Mutation::Applied),
        Err(e) if is_race(e.code()) => {
            tracing::info!(error = %aws_error(e, doing), "refused; looking again");
            Ok(Mutation::Refused)
        }
        Err(e) => Err(aws_error(e, doing)),
    }
}

/// An ENI as EC2 described it: its holder, private IPs and tags.
fn eni_resource(eni: &aws_sdk_ec2::types::NetworkInterface) -> Resource {
    let attachment = eni.attachment().and_then(|a| {
        Some(Attachment {
            instance: a.instance_id()?.to_string(),
            id: a.attachment_id().map(str::to_string),
            state: a
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        })
    });
    Resource {
        id: eni.network_interface_id().unwrap_or_default().to_string(),
        attachment,
        ips: eni_ips(eni),
        mac: eni.mac_address().map(str::to_string),
        tags: tag_map(eni.tag_set()),
    }
}

/// The ENI's private IPv4 addresses, its primary first (the broker advertises the first, and
/// the primary is the one that stays with the ENI). EC2 documents no order for
/// `PrivateIpAddresses`: each entry says whether it is the primary, and `PrivateIpAddress`
/// names it too (EC2 API Reference, NetworkInterface and NetworkInterfacePrivateIpAddress).
fn eni_ips(eni: &aws_sdk_ec2::types::NetworkInterface) -> Vec<String> {
    let listed = eni.private_ip_addresses();
    let primary = eni.private_ip_address().or_else(|| {
        listed
            .iter()
            .find(|a| a.primary() == Some(true))
            .and_then(|a| a.private_ip_address())
    });
    let mut out: Vec<String> = primary.map(str::to_string).into_iter().collect();
    for ip in listed.iter().filter_map(|a| a.private_ip_address()) {
        if !out.iter().any(|o| o == ip) {
            out.push(ip.to_string());
        }
    }
    out
}

/// A volume as EC2 described it: its holder and tags.
fn volume_resource(vol: &aws_sdk_ec2::types::Volume) -> Resource {
    let attachment = vol.attachments().first().and_then(|a| {
        Some(Attachment {
            instance: a.instance_id()?.to_string(),
            id: None,
            state: a
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        })
    });
    Resource {
        id: vol.volume_id().unwrap_or_default().to_string(),
        attachment,
        ips: Vec::new(),
        mac: None,
        tags: tag_map(vol.tags()),
    }
}

impl Ec2 {
    pub fn new(client: aws_sdk_ec2::Client) -> Ec2 {
        Ec2 { client }
    }

    /// Every resource of `kind` carrying all of `tags` (key, value), in `az` or anywhere.
    pub async fn tagged(
        &self,
        kind: ResourceKind,
        tags: &[(String, String)],
        az: Option<&str>,
    ) -> Result<Vec<Tagged>> {
        let mut filters: Vec<Filter> = tags
            .iter()
            .map(|(k, v)| filter(format!("tag:{k}"), vec![v.clone()]))
            .collect();
        if let Some(az) = az {
            filters.push(filter("availability-zone", vec![az.to_string()]));
        }
        let mut out = Vec::new();
        match kind {
            ResourceKind::Eni => {
                let mut pages = self
                    .client
                    .describe_network_interfaces()
                    .set_filters(Some(filters))
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| aws_error(e, "describing the tagged ENIs"))?;
                    out.extend(page.network_interfaces().iter().map(|e| Tagged {
                        az: e.availability_zone().unwrap_or_default().to_string(),
                        resource: eni_resource(e),
                    }));
                }
            }
            ResourceKind::Volume => {
                let mut pages = self
                    .client
                    .describe_volumes()
                    .set_filters(Some(filters))
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| aws_error(e, "describing the tagged volumes"))?;
                    out.extend(page.volumes().iter().map(|v| Tagged {
                        az: v.availability_zone().unwrap_or_default().to_string(),
                        resource: volume_resource(v),
                    }));
                }
            }
        }
        Ok(out)
    }

    /// One ENI or volume as EC2 describes it now: its holder, an ENI's IPs, its tags.
    pub async fn describe(&self, kind: ResourceKind, id: &str) -> Result<Resource> {
        let doing = format!("describing {id}");
        match kind {
            ResourceKind::Eni => {
                let out = self
                    .client
                    .describe_network_interfaces()
                    .network_interface_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws_error(e, &doing))?;
                let eni = out
                    .network_interfaces()
                    .first()
                    .with_context(|| format!("{id} vanished"))?;
                Ok(eni_resource(eni))
            }
            ResourceKind::Volume => {
                let out = self
                    .client
                    .describe_volumes()
                    .volume_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws_error(e, &doing))?;
                let vol = out
                    .volumes()
                    .first()
                    .with_context(|| format!("{id} vanished"))?;
                Ok(volume_resource(vol))
            }
        }
    }

    /// The state of every instance DescribeInstances lists for `filters`, all pages.
    async fn states_where(
        &self,
        filters: Vec<Filter>,
        doing: &str,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(e, doing))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                if let (Some(id), Some(state)) = (i.instance_id(), i.state().and_then(|s| s.name()))
                {
                    out.insert(id.to_string(), state.as_str().to_string());
                }
            }
        }
        Ok(out)
    }

    /// The state of each of `ids` that EC2 lists, only those in `states` when given.
    pub async fn instance_states(
        &self,
        ids: &[String],
        states: &[&str],
    ) -> Result<BTreeMap<String, String>> {
        let mut filters = vec![filter("instance-id", ids.to_vec())];
        if !states.is_empty() {
            filters.push(filter(
                "instance-state-name",
                states.iter().map(|s| s.to_string()).collect(),
            ));
        }
        self.states_where(filters, &format!("describing {}", ids.join(",")))
            .await
    }

    /// Those of `ids` that EC2 lists as dead (terminated or shutting-down) or not running
    /// ([`RETURNING_STATES`]), with their state. Asked positively: the answer holds the few
    /// not running and stays small when many run.
    pub async fn not_running_among(&self, ids: &[String]) -> Result<BTreeMap<String, String>> {
        let states: Vec<&str> = DEAD_STATES
            .iter()
            .chain(&RETURNING_STATES)
            .copied()
            .collect();
        self.instance_states(ids, &states).await
    }

    /// Every instance EC2 lists with all of `tags` (key, value), with its state.
    pub async fn instances_tagged(
        &self,
        tags: &[(String, String)],
    ) -> Result<BTreeMap<String, String>> {
        let filters = tags
            .iter()
            .map(|(k, v)| filter(format!("tag:{k}"), vec![v.clone()]))
            .collect();
        self.states_where(filters, "describing the instances tagged for an id")
            .await
    }

    /// One instance's state, `None` when EC2 does not list it.
    pub async fn instance_state(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .instance_states(&[id.to_string()], &[])
            .await?
            .remove(id))
    }

    /// Attaches an ENI at `device_index` (a refusal because someone moved first is logged).
    pub async fn attach_eni(
        &self,
        eni: &str,
        instance: &str,
        device_index: i32,
    ) -> Result<Mutation> {
        tolerate_race(
            self.client
                .attach_network_interface()
                .network_interface_id(eni)
                .instance_id(instance)
                .device_index(device_index)
                .send()
                .await,
            &format!("attaching {eni}"),
        )
    }

    /// Attaches a volume as `device` (a refusal because someone moved first is logged).
    pub async fn attach_volume(
        &self,
        volume: &str,
        instance: &str,
        device: &str,
    ) -> Result<Mutation> {
        tolerate_race(
            self.client
                .attach_volume()
                .volume_id(volume)
                .instance_id(instance)
                .device(device)
                .send()
                .await,
            &format!("attaching {volume}"),
        )
    }

    /// Detaches an ENI by force, by its attachment id.
    pub async fn force_detach_eni(
        &self,
        eni: &str,
        attachment: &str,
        holder: &str,
    ) -> Result<Mutation> {
        tolerate_race(
            self.client
                .detach_network_interface()
                .attachment_id(attachment)
                .force(true)
                .send()
                .await,
            &format!("detaching {eni} from {holder}"),
        )
    }

    /// Detaches a volume from `holder` by force.
    pub async fn force_detach_volume(&self, volume: &str, holder: &str) -> Result<Mutation> {
        tolerate_race(
            self.client
                .detach_volume()
                .volume_id(volume)
                .instance_id(holder)
                .force(true)
                .send()
                .await,
            &format!("detaching {volume} from {holder}"),
        )
    }

    /// Every tag of one resource (this instance's own, e.g. the `aws:cloudformation:*` and
    /// `aws:autoscaling:groupName` tags CloudFormation and Auto Scaling put on it).
    pub async fn tags_of(&self, resource: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut pages = self
            .client
            .describe_tags()
            .filters(filter("resource-id", vec![resource.to_string()]))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(e, &format!("describing {resource}'s tags")))?;
            for t in page.tags() {
                if let Some(k) = t.key() {
                    out.insert(k.to_string(), t.value().unwrap_or("").to_string());
                }
            }
        }
        Ok(out)
    }

    /// Removes tags (by key) from a resource.
    pub async fn untag(&self, resource: &str, keys: &[String]) -> Result<()> {
        self.client
            .delete_tags()
            .resources(resource)
            .set_tags(Some(
                keys.iter().map(|k| Tag::builder().key(k).build()).collect(),
            ))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error(e, &format!("removing {} from {resource}", keys.join(","))))
    }

    /// Sets tags (key, value) on a resource (an instance, a volume).
    pub async fn tag(&self, resource: &str, tags: &[(String, String)]) -> Result<()> {
        let said: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.client
            .create_tags()
            .resources(resource)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error(e, &format!("tagging {resource} with {}", said.join(","))))
    }

    /// Detaches an ENI from this instance (`holder`) by its attachment id, not by force: the
    /// leave of an instance the group terminates, after its broker stopped. A refusal because
    /// EC2 is busy with it, or it is detached already, is logged: look again.
    pub async fn detach_eni(&self, eni: &str, attachment: &str, holder: &str) -> Result<Mutation> {
        tolerate_race(
            self.client
                .detach_network_interface()
                .attachment_id(attachment)
                .force(false)
                .send()
                .await,
            &format!("detaching {eni} from {holder}"),
        )
    }

    /// Detaches a volume from this instance (`holder`), not by force: only once nothing has it
    /// mounted ("If an Amazon EBS volume is the root device of an instance, it can't be
    /// detached while the instance is running"; a mounted one "can ... be stuck in the busy
    /// state", DetachVolume API reference). A refusal as in [`Ec2::detach_eni`] is logged.
    pub async fn detach_volume(&self, volume: &str, holder: &str) -> Result<Mutation> {
        tolerate_race(
            self.client
                .detach_volume()
                .volume_id(volume)
                .instance_id(holder)
                .force(false)
                .send()
                .await,
            &format!("detaching {volume} from {holder}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_means_terminated_shutting_down_or_gone() {
        for s in [Some("terminated"), Some("shutting-down"), None] {
            assert!(matches!(Liveness::of(s), Liveness::Dead(_)), "{s:?}");
        }
        for s in ["pending", "running", "stopping", "stopped"] {
            assert_eq!(Liveness::of(Some(s)), Liveness::Alive(s.into()));
        }
        assert_eq!(Liveness::of(None), Liveness::Dead("gone".into()));
    }

    #[test]
    fn an_enis_primary_address_comes_first_whatever_the_listing_order() {
        use aws_sdk_ec2::types::{NetworkInterface, NetworkInterfacePrivateIpAddress as Ip};
        let ip =
            |a: &str, primary: bool| Ip::builder().private_ip_address(a).primary(primary).build();
        let listed_secondary_first = NetworkInterface::builder()
            .private_ip_address("10.0.2.5")
            .private_ip_addresses(ip("10.0.2.9", false))
            .private_ip_addresses(ip("10.0.2.5", true))
            .build();
        assert_eq!(eni_ips(&listed_secondary_first), ["10.0.2.5", "10.0.2.9"]);
        // Only the flags say which is primary.
        let flagged = NetworkInterface::builder()
            .private_ip_addresses(ip("10.0.2.9", false))
            .private_ip_addresses(ip("10.0.2.5", true))
            .build();
        assert_eq!(eni_ips(&flagged), ["10.0.2.5", "10.0.2.9"]);
        // Only the interface's own field names it (no listing).
        let bare = NetworkInterface::builder()
            .private_ip_address("10.0.2.5")
            .build();
        assert_eq!(eni_ips(&bare), ["10.0.2.5"]);
    }
}
