//! The testbed's Auto Scaling behaves as the service does where kafka-agent relies on it:
//! desired capacity is kept by replacing terminated and Unhealthy instances at the next health
//! check (terminate first, or launch first under a "launch before terminating" instance
//! maintenance policy), honouring the grace period; launches go to the zone with the fewest
//! instances; launch hooks hold an instance in Pending:Wait until CONTINUE, ABANDON or the
//! heartbeat timeout; termination hooks hold a leaving one, still running and with IMDS's
//! target lifecycle state Terminated, in Terminating:Wait; scale-in follows the default
//! termination policy. Needs root; shares one
//! moto per test binary; every test makes its own world (VPC, namespaces, scope).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::operation::create_auto_scaling_group::builders::CreateAutoScalingGroupFluentBuilder;
use aws_sdk_autoscaling::types::{
    InstanceMaintenancePolicy, LaunchTemplateSpecification, LifecycleHookSpecification, Tag,
};
use kafka_testbed::{self as testbed, World, aws::ScopeSettings};

const AMI: &str = "ami-12c6146b";
const HOOK: &str = "boot";
/// Health check interval of every test's groups.
const INTERVAL: f64 = 0.5;

fn autoscaling(world: &World) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&testbed::shared().moto.sdk_config(&world.scope))
}

/// The world's scope with short health checks and shutdowns; `scale` multiplies hook timeouts.
async fn configure(world: &World, scale: f64) {
    let settings = ScopeSettings {
        asg_health_check_interval: Some(INTERVAL),
        shutdown_delay: Some(0.5),
        lifecycle_time_scale: Some(scale),
        ..Default::default()
    };
    testbed::shared()
        .moto
        .configure(&world.scope, &settings)
        .await
        .unwrap();
}

/// A launch template (m5.large, the testbed's AMI) with `versions` versions; returns its id.
async fn template(world: &World, name: &str, versions: usize) -> String {
    let data = || {
        aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .image_id(AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
            .build()
    };
    let id = world
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data())
        .send()
        .await
        .unwrap()
        .launch_template
        .unwrap()
        .launch_template_id
        .unwrap();
    for _ in 1..versions {
        world
            .ec2
            .create_launch_template_version()
            .launch_template_id(&id)
            .launch_template_data(data())
            .send()
            .await
            .unwrap();
    }
    id
}

/// CreateAutoScalingGroup over the world's subnets in `azs`, from a new launch template.
async fn group(
    world: &World,
    name: &str,
    azs: &[&str],
    desired: i32,
) -> CreateAutoScalingGroupFluentBuilder {
    let lt = template(world, name, 1).await;
    let subnets: Vec<String> = azs
        .iter()
        .map(|az| world.subnet(az).unwrap().id.clone())
        .collect();
    autoscaling(world)
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(lt)
                .build(),
        )
        .min_size(0)
        .max_size(6)
        .desired_capacity(desired)
        .vpc_zone_identifier(subnets.join(","))
}

fn launch_hook(timeout: i32, default_result: Option<&str>) -> LifecycleHookSpecification {
    LifecycleHookSpecification::builder()
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .heartbeat_timeout(timeout)
        .set_default_result(default_result.map(str::to_string))
        .build()
}

#[derive(Debug, Clone, PartialEq)]
struct Member {
    id: String,
    az: String,
    state: String,
    health: String,
}

async fn members(world: &World, name: &str) -> Vec<Member> {
    let out = autoscaling(world)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap();
    out.auto_scaling_groups()[0]
        .instances()
        .iter()
        .map(|i| Member {
            id: i.instance_id().unwrap().to_string(),
            az: i.availability_zone().unwrap().to_string(),
            state: i.lifecycle_state().unwrap().as_str().to_string(),
            health: i.health_status().unwrap().to_string(),
        })
        .collect()
}

fn member<'a>(all: &'a [Member], id: &str) -> Option<&'a Member> {
    all.iter().find(|m| m.id == id)
}

/// EC2's state of each instance of the world.
async fn ec2_states(world: &World) -> BTreeMap<String, String> {
    let state = testbed::shared().moto.state(&world.vpc_id).await.unwrap();
    state
        .instances
        .into_iter()
        .map(|i| (i.id, i.state))
        .collect()
}

/// Polls `check` every 50 ms until it gives a value, for up to `cap`.
async fn until<T, F, Fut>(cap: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < cap, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the group holds `n` instances, all in `state`; returns them.
async fn settled(world: &World, name: &str, n: usize, state: &str) -> Vec<Member> {
    until(
        Duration::from_secs(20),
        &format!("{n} instances {state}"),
        || async {
            let m = members(world, name).await;
            (m.len() == n && m.iter().all(|m| m.state == state)).then_some(m)
        },
    )
    .await
}

async fn open_actions(name: &str) -> Vec<testbed::aws::OpenLifecycleAction> {
    let all = testbed::shared()
        .moto
        .open_lifecycle_actions()
        .await
        .unwrap();
    all.into_iter()
        .filter(|a| a.auto_scaling_group == name)
        .collect()
}

async fn token_of(name: &str, instance: &str) -> String {
    until(Duration::from_secs(10), "an open action", || async {
        open_actions(name)
            .await
            .into_iter()
            .find(|a| a.instance_id == instance)
            .map(|a| a.token)
    })
    .await
}

async fn complete_by_token(world: &World, name: &str, token: &str, result: &str) -> Option<String> {
    autoscaling(world)
        .complete_lifecycle_action()
        .auto_scaling_group_name(name)
        .lifecycle_hook_name(HOOK)
        .lifecycle_action_token(token)
        .lifecycle_action_result(result)
        .send()
        .await
        .err()
        .map(|e| e.code().unwrap_or("<no code>").to_string())
}

async fn set_unhealthy(world: &World, instance: &str, respect_grace: Option<bool>) {
    autoscaling(world)
        .set_instance_health()
        .instance_id(instance)
        .health_status("Unhealthy")
        .set_should_respect_grace_period(respect_grace)
        .send()
        .await
        .unwrap();
}

async fn set_desired(world: &World, name: &str, n: i32) {
    autoscaling(world)
        .set_desired_capacity()
        .auto_scaling_group_name(name)
        .desired_capacity(n)
        .send()
        .await
        .unwrap();
}

/// Deletes the group (its instances are terminated), so that nothing keeps cycling.
async fn delete(world: &World, name: &str) {
    autoscaling(world)
        .delete_auto_scaling_group()
        .auto_scaling_group_name(name)
        .force_delete(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_terminated_instance_is_replaced_in_its_zone_once_ec2_has_terminated_it() {
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    let tag = |k: &str, v: &str, propagate: bool| {
        Tag::builder()
            .key(k)
            .value(v)
            .propagate_at_launch(propagate)
            .build()
    };
    group(&world, &name, &["a", "b", "c"], 3)
        .await
        .tags(tag("role", "broker", true))
        .tags(tag("note", "group only", false))
        .tags(tag("aws:cloudformation:stack-name", "kafka", true))
        .tags(tag("aws:cloudformation:logical-id", "Brokers", true))
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 3, "InService").await;
    let zones: BTreeSet<&str> = first.iter().map(|m| m.az.as_str()).collect();
    assert_eq!(zones.len(), 3, "one instance per zone: {first:?}");
    let victim = first.iter().find(|m| m.az == "us-east-1b").unwrap().clone();

    world
        .ec2
        .terminate_instances()
        .instance_ids(&victim.id)
        .send()
        .await
        .unwrap();
    // moto replaced it inside the call; the service notices at a health check.
    let now = members(&world, &name).await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(member(&now, &victim.id).is_some(), "{now:?}");

    let known: BTreeSet<String> = first.iter().map(|m| m.id.clone()).collect();
    let new = until(Duration::from_secs(15), "a replacement", || async {
        let m = members(&world, &name).await;
        let new = m.iter().find(|m| !known.contains(&m.id))?.clone();
        // Read after the group: its predecessor was terminated before it was launched.
        let ec2 = ec2_states(&world).await;
        assert_eq!(ec2[&victim.id], "terminated", "launched before: {m:?}");
        assert!(member(&m, &victim.id).is_none(), "{m:?}");
        Some(new)
    })
    .await;
    assert_eq!(new.az, victim.az, "lands in the zone its predecessor left");
    world
        .wait_until(Duration::from_secs(15), "the replacement's host", || {
            world.host_links(&new.id).is_ok()
        })
        .await
        .unwrap();
    let after = settled(&world, &name, 3, "InService").await;
    assert!(member(&after, &new.id).is_some());

    let state = testbed::shared().moto.state(&world.vpc_id).await.unwrap();
    let tags = &state
        .instances
        .iter()
        .find(|i| i.id == new.id)
        .unwrap()
        .tags;
    assert_eq!(tags.get("role").map(String::as_str), Some("broker"));
    assert_eq!(tags.get("note"), None, "not propagated: {tags:?}");
    assert_eq!(
        tags.get("aws:autoscaling:groupName").map(String::as_str),
        Some(name.as_str())
    );
    assert_eq!(
        tags.get("aws:cloudformation:stack-name")
            .map(String::as_str),
        Some("kafka")
    );
    assert_eq!(
        tags.get("aws:cloudformation:logical-id")
            .map(String::as_str),
        Some("Brokers")
    );
    delete(&world, &name).await;
}

#[tokio::test]
async fn an_unhealthy_instance_is_terminated_first_then_replaced() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a", "b"], 2)
        .await
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 2, "InService").await;
    let victim = first[0].clone();
    set_unhealthy(&world, &victim.id, Some(false)).await;

    let seen_terminating = std::cell::Cell::new(false);
    let new = until(Duration::from_secs(15), "a replacement", || async {
        let m = members(&world, &name).await;
        if let Some(v) = member(&m, &victim.id) {
            assert_eq!(v.health, "Unhealthy");
            if v.state == "Terminating" {
                seen_terminating.set(true);
            }
        }
        let new = m
            .iter()
            .find(|n| first.iter().all(|f| f.id != n.id))?
            .clone();
        let ec2 = ec2_states(&world).await;
        assert_eq!(ec2[&victim.id], "terminated", "launched first: {m:?}");
        Some(new)
    })
    .await;
    assert!(seen_terminating.get(), "the group showed it Terminating");
    assert_eq!(new.az, victim.az);
    let after = settled(&world, &name, 2, "InService").await;
    assert!(
        member(&after, &first[1].id).is_some(),
        "the healthy one stays"
    );
    delete(&world, &name).await;
}

#[tokio::test]
async fn launch_before_terminating_keeps_the_unhealthy_instance_until_its_replacement_serves() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a", "b"], 2)
        .await
        .lifecycle_hook_specification_list(launch_hook(300, None))
        .instance_maintenance_policy(
            InstanceMaintenancePolicy::builder()
                .min_healthy_percentage(100)
                .max_healthy_percentage(200)
                .build(),
        )
        .send()
        .await
        .unwrap();
    for m in settled(&world, &name, 2, "Pending:Wait").await {
        let token = token_of(&name, &m.id).await;
        assert_eq!(
            complete_by_token(&world, &name, &token, "CONTINUE").await,
            None
        );
    }
    let first = settled(&world, &name, 2, "InService").await;
    let described = autoscaling(&world)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    let policy = described.auto_scaling_groups()[0]
        .instance_maintenance_policy()
        .expect("the group keeps its policy");
    assert_eq!(policy.min_healthy_percentage(), Some(100));

    let victim = first[0].clone();
    set_unhealthy(&world, &victim.id, Some(false)).await;
    let new = until(Duration::from_secs(10), "a replacement", || async {
        let m = members(&world, &name).await;
        m.iter()
            .find(|n| first.iter().all(|f| f.id != n.id))
            .cloned()
    })
    .await;
    assert_eq!(new.az, victim.az);
    // The replacement waits in its hook for three health checks: the old one keeps serving.
    tokio::time::sleep(Duration::from_secs_f64(3.0 * INTERVAL)).await;
    let m = members(&world, &name).await;
    assert_eq!(member(&m, &new.id).unwrap().state, "Pending:Wait");
    assert_eq!(member(&m, &victim.id).unwrap().state, "InService", "{m:?}");
    assert_eq!(ec2_states(&world).await[&victim.id], "running");

    let token = token_of(&name, &new.id).await;
    assert_eq!(
        complete_by_token(&world, &name, &token, "CONTINUE").await,
        None
    );
    until(
        Duration::from_secs(10),
        "the old one terminated",
        || async {
            let ec2 = ec2_states(&world).await;
            (ec2[&victim.id] != "running").then_some(())
        },
    )
    .await;
    let after = settled(&world, &name, 2, "InService").await;
    assert!(member(&after, &new.id).is_some(), "{after:?}");
    assert!(member(&after, &victim.id).is_none(), "{after:?}");
    delete(&world, &name).await;
}

#[tokio::test]
async fn the_grace_period_shields_an_instance_from_an_unhealthy_mark_that_respects_it() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    let grace = Duration::from_secs(4);
    group(&world, &name, &["a"], 1)
        .await
        .health_check_grace_period(grace.as_secs() as i32)
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 1, "InService").await[0].clone();
    let in_service = Instant::now();

    // Within the grace period a mark that respects it changes nothing.
    set_unhealthy(&world, &first.id, None).await;
    tokio::time::sleep(Duration::from_secs_f64(3.0 * INTERVAL)).await;
    let m = members(&world, &name).await;
    assert_eq!(m, vec![first.clone()], "kept during the grace period");

    // After it, the same call marks it and the group replaces it.
    tokio::time::sleep(
        (in_service + grace + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
    )
    .await;
    set_unhealthy(&world, &first.id, None).await;
    let second = until(Duration::from_secs(15), "a replacement", || async {
        let m = members(&world, &name).await;
        m.into_iter()
            .find(|m| m.id != first.id && m.state == "InService")
    })
    .await;

    // A mark that does not respect it applies at once, in the grace period too.
    set_unhealthy(&world, &second.id, Some(false)).await;
    let m = members(&world, &name).await;
    assert_eq!(member(&m, &second.id).unwrap().health, "Unhealthy");
    until(Duration::from_secs(15), "a third instance", || async {
        let m = members(&world, &name).await;
        m.into_iter()
            .find(|m| m.id != first.id && m.id != second.id)
            .map(|_| ())
    })
    .await;
    delete(&world, &name).await;
}

#[tokio::test]
async fn a_launch_waits_in_pending_wait_until_continue_and_only_its_open_action_is_taken() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(launch_hook(300, None))
        .send()
        .await
        .unwrap();
    let inst = settled(&world, &name, 1, "Pending:Wait").await[0]
        .id
        .clone();
    world
        .wait_until(Duration::from_secs(15), "the host", || {
            world.host_links(&inst).is_ok()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs_f64(3.0 * INTERVAL)).await;
    assert_eq!(members(&world, &name).await[0].state, "Pending:Wait");
    let token = token_of(&name, &inst).await;

    let asg = autoscaling(&world);
    let wrong = complete_by_token(
        &world,
        &name,
        "00000000-0000-0000-0000-000000000000",
        "CONTINUE",
    )
    .await;
    assert_eq!(wrong.as_deref(), Some("ValidationError"));
    let other_hook = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name("nope")
        .lifecycle_action_token(&token)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .expect_err("no such hook");
    assert_eq!(other_hook.code(), Some("ValidationError"));
    asg.record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name(HOOK)
        .lifecycle_action_token(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(members(&world, &name).await[0].state, "Pending:Wait");

    assert_eq!(
        complete_by_token(&world, &name, &token, "CONTINUE").await,
        None
    );
    assert_eq!(members(&world, &name).await[0].state, "InService");
    assert!(open_actions(&name).await.is_empty());
    // The action ended: its token is stale, and the instance has none open.
    let stale = complete_by_token(&world, &name, &token, "CONTINUE").await;
    assert_eq!(stale.as_deref(), Some("ValidationError"));
    let by_id = asg
        .record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name(HOOK)
        .instance_id(&inst)
        .send()
        .await
        .expect_err("no open action");
    assert!(
        by_id
            .message()
            .unwrap_or_default()
            .contains("No active Lifecycle Action"),
        "{by_id:?}"
    );
    delete(&world, &name).await;
}

#[tokio::test]
async fn abandon_terminates_the_instance_and_the_group_replaces_it() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(launch_hook(300, None))
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 1, "Pending:Wait").await[0]
        .id
        .clone();
    let token = token_of(&name, &first).await;
    autoscaling(&world)
        .complete_lifecycle_action()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name(HOOK)
        .instance_id(&first)
        .lifecycle_action_result("ABANDON")
        .send()
        .await
        .unwrap();
    assert_eq!(members(&world, &name).await[0].state, "Terminating");
    let second = until(Duration::from_secs(15), "a replacement waiting", || async {
        let m = members(&world, &name).await;
        m.into_iter()
            .find(|m| m.id != first && m.state == "Pending:Wait")
    })
    .await;
    assert_eq!(ec2_states(&world).await[&first], "terminated");
    let again = token_of(&name, &second.id).await;
    assert_ne!(again, token, "a new action, a new token");
    let stale = complete_by_token(&world, &name, &token, "CONTINUE").await;
    assert_eq!(stale.as_deref(), Some("ValidationError"));
    let recorded: Vec<_> = testbed::shared()
        .moto
        .lifecycle_actions()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.auto_scaling_group == name)
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].result.as_deref(), Some("ABANDON"));
    delete(&world, &name).await;
}

#[tokio::test]
async fn the_heartbeat_timeout_applies_the_hooks_default_result() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // 30 s (the service's minimum) last 0.6 s.
    configure(&world, 0.02).await;
    let asg = autoscaling(&world);
    let short = asg
        .put_lifecycle_hook()
        .auto_scaling_group_name("nope")
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .heartbeat_timeout(10)
        .send()
        .await
        .expect_err("below 30 s or no such group");
    assert_eq!(short.code(), Some("ValidationError"));

    let cont = format!("{}-continue", world.id);
    let aband = format!("{}-abandon", world.id);
    group(&world, &cont, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(launch_hook(30, Some("CONTINUE")))
        .send()
        .await
        .unwrap();
    group(&world, &aband, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(launch_hook(30, None))
        .send()
        .await
        .unwrap();
    let c = members(&world, &cont).await[0].id.clone();
    let a = members(&world, &aband).await[0].id.clone();

    // CONTINUE: the same instance goes into service on its own.
    let served = settled(&world, &cont, 1, "InService").await;
    assert_eq!(served[0].id, c);
    // ABANDON (the default): terminated and replaced.
    until(
        Duration::from_secs(15),
        "the abandoned one replaced",
        || async {
            let m = members(&world, &aband).await;
            let gone = ec2_states(&world).await[&a] == "terminated";
            (gone && m.iter().any(|m| m.id != a)).then_some(())
        },
    )
    .await;
    assert!(
        testbed::shared()
            .moto
            .lifecycle_actions()
            .await
            .unwrap()
            .iter()
            .all(|r| r.auto_scaling_group != aband && r.auto_scaling_group != cont),
        "timeouts are no calls"
    );
    delete(&world, &aband).await;
    delete(&world, &cont).await;
}

#[tokio::test]
async fn heartbeats_extend_the_timeout() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // 30 s last 1.5 s.
    configure(&world, 0.05).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(launch_hook(30, None))
        .send()
        .await
        .unwrap();
    let inst = settled(&world, &name, 1, "Pending:Wait").await[0]
        .id
        .clone();
    let asg = autoscaling(&world);
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&name)
            .lifecycle_hook_name(HOOK)
            .instance_id(&inst)
            .send()
            .await
            .unwrap();
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Well past one timeout: still waiting.
    let m = members(&world, &name).await;
    assert_eq!(member(&m, &inst).unwrap().state, "Pending:Wait", "{m:?}");
    let left = open_actions(&name).await[0].seconds_left;
    assert!(left > 0.5 && left <= 1.5, "{left}");

    // Without heartbeats the timeout applies ABANDON.
    until(Duration::from_secs(10), "the timeout", || async {
        let m = members(&world, &name).await;
        (member(&m, &inst).is_none_or(|m| m.state == "Terminating")).then_some(())
    })
    .await;
    assert!(
        last.elapsed() >= Duration::from_millis(1300),
        "abandoned {:?} after the last heartbeat",
        last.elapsed()
    );
    delete(&world, &name).await;
}

#[tokio::test]
async fn scale_out_fills_the_emptiest_zone_and_scale_in_takes_from_the_fullest() {
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a", "b", "c"], 2)
        .await
        .send()
        .await
        .unwrap();
    let two = settled(&world, &name, 2, "InService").await;
    let used: BTreeSet<String> = two.iter().map(|m| m.az.clone()).collect();
    assert_eq!(used.len(), 2, "{two:?}");

    set_desired(&world, &name, 3).await;
    let three = members(&world, &name).await;
    let third = three
        .iter()
        .find(|m| two.iter().all(|t| t.id != m.id))
        .unwrap();
    assert!(!used.contains(&third.az), "the empty zone: {three:?}");

    // A fourth doubles one zone; a second apart so its billing hour differs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    set_desired(&world, &name, 4).await;
    let four = settled(&world, &name, 4, "InService").await;
    let fourth = four
        .iter()
        .find(|m| three.iter().all(|t| t.id != m.id))
        .unwrap()
        .clone();
    let older = four
        .iter()
        .find(|m| m.az == fourth.az && m.id != fourth.id)
        .unwrap()
        .clone();

    let above = autoscaling(&world)
        .set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(7)
        .send()
        .await
        .expect_err("above MaxSize");
    assert_eq!(above.code(), Some("ValidationError"));

    // Scale in: the fullest zone, then the instance closest to its next billing hour (the
    // older one).
    set_desired(&world, &name, 3).await;
    let m = members(&world, &name).await;
    let leaving: Vec<&Member> = m.iter().filter(|m| m.state == "Terminating").collect();
    assert_eq!(leaving.len(), 1, "{m:?}");
    assert_eq!(leaving[0].id, older.id, "{m:?}");
    let left = settled(&world, &name, 3, "InService").await;
    let zones: BTreeSet<&str> = left.iter().map(|m| m.az.as_str()).collect();
    assert_eq!(zones.len(), 3, "balanced again: {left:?}");
    delete(&world, &name).await;
}

#[tokio::test]
async fn scale_in_takes_the_oldest_template_version_before_the_oldest_instance() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    let lt = template(&world, &name, 2).await;
    let spec = |v: &str| {
        LaunchTemplateSpecification::builder()
            .launch_template_id(&lt)
            .version(v)
            .build()
    };
    let asg = autoscaling(&world);
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(spec("2"))
        .min_size(0)
        .max_size(3)
        .desired_capacity(1)
        .vpc_zone_identifier(&world.subnet("a").unwrap().id)
        .send()
        .await
        .unwrap();
    let on_v2 = settled(&world, &name, 1, "InService").await[0].id.clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Back to version 1: the newer instance runs the older version.
    asg.update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(spec("1"))
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    let two = settled(&world, &name, 2, "InService").await;
    let on_v1 = two.iter().find(|m| m.id != on_v2).unwrap().id.clone();

    set_desired(&world, &name, 1).await;
    let m = members(&world, &name).await;
    assert_eq!(member(&m, &on_v1).unwrap().state, "Terminating", "{m:?}");
    assert_eq!(member(&m, &on_v2).unwrap().state, "InService", "{m:?}");
    delete(&world, &name).await;
}

// ---------------------------------------------------------------- termination hooks

const LEAVE: &str = "leave";

fn termination_hook(timeout: i32, default_result: Option<&str>) -> LifecycleHookSpecification {
    LifecycleHookSpecification::builder()
        .lifecycle_hook_name(LEAVE)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(timeout)
        .set_default_result(default_result.map(str::to_string))
        .build()
}

/// `autoscaling/target-lifecycle-state` as the instance's IMDS serves it (None: 404).
fn target_state(world: &World, inst: &str) -> Option<String> {
    world
        .on_host(inst, async move {
            aws_config::imds::Client::builder()
                .build()
                .get("/latest/meta-data/autoscaling/target-lifecycle-state")
                .await
                .ok()
                .map(|v| v.as_ref().to_string())
        })
        .unwrap()
}

/// Waits until the instance's IMDS serves `want` as its target lifecycle state.
async fn target_becomes(world: &World, inst: &str, want: &str) {
    until(
        Duration::from_secs(10),
        &format!("{inst}'s target lifecycle state {want}"),
        || async { (target_state(world, inst).as_deref() == Some(want)).then_some(()) },
    )
    .await
}

async fn termination_token(name: &str, instance: &str) -> String {
    until(
        Duration::from_secs(10),
        "an open termination action",
        || async {
            open_actions(name)
                .await
                .into_iter()
                .find(|a| {
                    a.instance_id == instance
                        && a.hook == LEAVE
                        && a.transition == "autoscaling:EC2_INSTANCE_TERMINATING"
                })
                .map(|a| a.token)
        },
    )
    .await
}

async fn complete_leave(
    world: &World,
    name: &str,
    token: Option<&str>,
    instance: Option<&str>,
    result: &str,
) -> Option<String> {
    autoscaling(world)
        .complete_lifecycle_action()
        .auto_scaling_group_name(name)
        .lifecycle_hook_name(LEAVE)
        .set_lifecycle_action_token(token.map(str::to_string))
        .set_instance_id(instance.map(str::to_string))
        .lifecycle_action_result(result)
        .send()
        .await
        .err()
        .map(|e| e.code().unwrap_or("<no code>").to_string())
}

#[tokio::test]
async fn a_scaled_in_instance_waits_running_in_terminating_wait_with_imds_saying_terminated() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a", "b"], 2)
        .await
        .lifecycle_hook_specification_list(termination_hook(300, None))
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 2, "InService").await;
    for m in &first {
        world
            .wait_until(Duration::from_secs(15), "the host", || {
                world.host_links(&m.id).is_ok()
            })
            .await
            .unwrap();
        target_becomes(&world, &m.id, "InService").await;
    }

    set_desired(&world, &name, 1).await;
    let m = members(&world, &name).await;
    let leaving: Vec<&Member> = m.iter().filter(|m| m.state == "Terminating:Wait").collect();
    assert_eq!(leaving.len(), 1, "{m:?}");
    let leaver = leaving[0].id.clone();
    let stayer = first.iter().find(|f| f.id != leaver).unwrap().id.clone();
    target_becomes(&world, &leaver, "Terminated").await;
    assert_eq!(target_state(&world, &stayer).as_deref(), Some("InService"));

    // It waits, running, for health check after health check; nothing else is terminated
    // and nothing launched.
    tokio::time::sleep(Duration::from_secs_f64(4.0 * INTERVAL)).await;
    let m = members(&world, &name).await;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(member(&m, &leaver).unwrap().state, "Terminating:Wait");
    assert_eq!(member(&m, &stayer).unwrap().state, "InService");
    let ec2 = ec2_states(&world).await;
    assert_eq!(ec2[&leaver], "running");
    assert_eq!(ec2[&stayer], "running");

    // Wrong and stale tokens are refused as the service refuses them.
    let token = termination_token(&name, &leaver).await;
    let wrong = complete_leave(
        &world,
        &name,
        Some("00000000-0000-0000-0000-000000000000"),
        None,
        "CONTINUE",
    )
    .await;
    assert_eq!(wrong.as_deref(), Some("ValidationError"));
    let not_waiting = complete_leave(&world, &name, None, Some(&stayer), "CONTINUE").await;
    assert_eq!(not_waiting.as_deref(), Some("ValidationError"));
    autoscaling(&world)
        .record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name(LEAVE)
        .instance_id(&leaver)
        .send()
        .await
        .unwrap();
    assert_eq!(
        complete_leave(&world, &name, Some(&token), None, "CONTINUE").await,
        None
    );
    let stale = complete_leave(&world, &name, Some(&token), None, "CONTINUE").await;
    assert_eq!(stale.as_deref(), Some("ValidationError"));

    // CONTINUE: terminated, and the group keeps the one it has.
    until(Duration::from_secs(10), "terminated", || async {
        (ec2_states(&world).await[&leaver] == "terminated").then_some(())
    })
    .await;
    let after = settled(&world, &name, 1, "InService").await;
    assert_eq!(after[0].id, stayer);
    let recorded: Vec<_> = testbed::shared()
        .moto
        .lifecycle_actions()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.auto_scaling_group == name)
        .collect();
    assert_eq!(
        recorded.len(),
        2,
        "one heartbeat, one completion: {recorded:?}"
    );
    delete(&world, &name).await;
}

#[tokio::test]
async fn abandon_and_the_timeout_both_terminate_a_leaving_instance() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // 30 s (the service's minimum) last 1.5 s.
    configure(&world, 0.05).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 2)
        .await
        .lifecycle_hook_specification_list(termination_hook(30, Some("CONTINUE")))
        .send()
        .await
        .unwrap();
    let first = settled(&world, &name, 2, "InService").await;
    let (a, b) = (first[0].id.clone(), first[1].id.clone());
    let asg = autoscaling(&world);
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&a)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        member(&members(&world, &name).await, &a).unwrap().state,
        "Terminating:Wait"
    );
    assert_eq!(
        complete_leave(&world, &name, None, Some(&a), "ABANDON").await,
        None
    );
    until(Duration::from_secs(10), "ABANDON terminates", || async {
        (ec2_states(&world).await[&a] != "running").then_some(())
    })
    .await;

    // No call at all: the timeout applies the DefaultResult, which terminates too.
    set_desired(&world, &name, 0).await;
    assert_eq!(
        member(&members(&world, &name).await, &b).unwrap().state,
        "Terminating:Wait"
    );
    let asked = Instant::now();
    until(
        Duration::from_secs(15),
        "the timeout terminates",
        || async { (ec2_states(&world).await[&b] != "running").then_some(()) },
    )
    .await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1200),
        "terminated {:?} after the scale-in, before its timeout",
        asked.elapsed()
    );
    settled(&world, &name, 0, "InService").await;
    delete(&world, &name).await;
}

#[tokio::test]
async fn a_replacement_with_a_termination_hook_launches_once_the_old_one_is_terminated() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(termination_hook(300, None))
        .send()
        .await
        .unwrap();
    // Replaced because marked Unhealthy, then because terminated through the group.
    for how in ["Unhealthy", "TerminateInstanceInAutoScalingGroup"] {
        let old = settled(&world, &name, 1, "InService").await[0].id.clone();
        if how == "Unhealthy" {
            set_unhealthy(&world, &old, Some(false)).await;
        } else {
            autoscaling(&world)
                .terminate_instance_in_auto_scaling_group()
                .instance_id(&old)
                .should_decrement_desired_capacity(false)
                .send()
                .await
                .unwrap();
        }
        until(Duration::from_secs(10), "Terminating:Wait", || async {
            let m = members(&world, &name).await;
            (member(&m, &old)?.state == "Terminating:Wait").then_some(())
        })
        .await;
        // Terminate first (the default instance maintenance policy): nothing is launched
        // while the old one waits in its hook.
        tokio::time::sleep(Duration::from_secs_f64(4.0 * INTERVAL)).await;
        let m = members(&world, &name).await;
        assert_eq!(m.len(), 1, "{how}: launched before terminating: {m:?}");
        assert_eq!(ec2_states(&world).await[&old], "running", "{how}");
        assert_eq!(
            complete_leave(&world, &name, None, Some(&old), "CONTINUE").await,
            None,
            "{how}"
        );
        let new = until(Duration::from_secs(15), "a replacement", || async {
            let m = members(&world, &name).await;
            let new = m.iter().find(|n| n.id != old)?.clone();
            assert_eq!(
                ec2_states(&world).await[&old],
                "terminated",
                "{how}: launched before terminated: {m:?}"
            );
            Some(new)
        })
        .await;
        assert_eq!(new.az, "us-east-1a");
    }
    delete(&world, &name).await;
}

#[tokio::test]
async fn launch_before_terminating_holds_the_old_one_in_its_termination_hook_after_the_new_one_serves()
 {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(&world, 1.0).await;
    let name = format!("{}-brokers", world.id);
    group(&world, &name, &["a"], 1)
        .await
        .lifecycle_hook_specification_list(termination_hook(300, None))
        .instance_maintenance_policy(
            InstanceMaintenancePolicy::builder()
                .min_healthy_percentage(100)
                .max_healthy_percentage(200)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let old = settled(&world, &name, 1, "InService").await[0].id.clone();
    set_unhealthy(&world, &old, Some(false)).await;
    let new = until(
        Duration::from_secs(15),
        "the new one in service",
        || async {
            let m = members(&world, &name).await;
            m.into_iter()
                .find(|n| n.id != old && n.state == "InService")
        },
    )
    .await;
    until(Duration::from_secs(10), "the old one leaving", || async {
        let m = members(&world, &name).await;
        (member(&m, &old)?.state == "Terminating:Wait").then_some(())
    })
    .await;
    assert_eq!(ec2_states(&world).await[&old], "running");
    target_becomes(&world, &old, "Terminated").await;
    assert_eq!(
        complete_leave(&world, &name, None, Some(&old), "CONTINUE").await,
        None
    );
    let after = settled(&world, &name, 1, "InService").await;
    assert_eq!(after[0].id, new.id);
    delete(&world, &name).await;
}
