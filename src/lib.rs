//! kafka-agent makes a Kafka broker or ZooKeeper node in an Auto Scaling Group whole on every
//! boot, with no human in the loop:
//!
//! 1. claim a unique broker id / myid (ZooKeeper or CloudWatch Logs);
//! 2. attach the ENI and EBS volume tagged for that id, taking them over from a dead owner;
//! 3. route the ENI through netlink;
//! 4. mount the volume and check the data belongs to this id and cluster;
//! 5. render the Kafka or ZooKeeper configuration;
//! 6. signal CloudFormation / the lifecycle hook;
//! 7. answer `kafka-agent status`.
//!
//! Each step observes the world, plans the difference and applies only that. This crate is
//! at the foundation stage: configuration and the AWS seam; the testbed (feature `testbed`)
//! simulates the world the steps run in.

pub mod attach;
pub mod aws;
pub mod backoff;
pub mod claim;
pub mod cli;
pub mod config;
pub mod exit;
pub mod identity;
pub mod journal;
pub mod network;
pub mod storage;

#[cfg(feature = "testbed")]
pub mod testbed;
