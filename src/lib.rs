//! kafka-agent makes a Kafka broker or ZooKeeper node in an Auto Scaling Group whole on every
//! boot, with no human in the loop:
//!
//! 1. claim a unique broker id / myid (ZooKeeper or CloudWatch Logs);
//! 2. attach the ENI and EBS volume tagged for that id, taking them over from a dead owner
//!    ([`attach`]);
//! 3. mount the volume and check the data belongs to this id and cluster ([`storage`]);
//! 4. route the ENI through netlink ([`network`]);
//! 5. render the Kafka or ZooKeeper configuration;
//! 6. signal CloudFormation / the lifecycle hook;
//! 7. answer `kafka-agent status`.
//!
//! Step 1 is [`claim`]. Each step observes the world, plans the difference and applies only
//! that; the outside systems are asked through their seams in [`aws`] (EC2, CloudWatch Logs,
//! IMDS), [`claim::zookeeper`], [`network`] (netlink) and [`storage`] (block devices). Steps
//! 5 to 7 arrive issue by issue; `kafka-agent boot` runs steps 1 to 4 under one [`deadline`]. The simulated world the tests run in
//! is the separate crate `kafka-testbed` (testbed/), never part of this one.

pub mod attach;
pub mod aws;
pub mod backoff;
pub mod boot;
pub mod claim;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod ensemble;
pub mod exit;
pub mod journal;
pub mod leave;
pub mod network;
pub mod render;
pub mod signal;
pub mod status;
pub mod storage;
pub mod watch;
