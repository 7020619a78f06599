//! Step 3, the volume's first format and the identity gate: a volume is formatted only when it
//! is provably blank (a probe found nothing and it reads back as zeros), a format cut short
//! converges on the next run, and the data is checked where the configuration will point
//! before anything writes to the volume. Needs root.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, Cluster};
use kafka_testbed::{self as testbed, World};

/// The loop device's backing image of a volume (the testbed keeps it under the world's dir).
fn image(world: &World, vol: &str) -> PathBuf {
    world.dir.join("volumes").join(format!("{vol}.img"))
}

fn device(world: &World, inst: &str) -> PathBuf {
    world.host_dir(inst).join("dev/nvme1n1")
}

async fn state_tag(world: &World, vol: &str) -> Option<String> {
    let out = world
        .ec2
        .describe_volumes()
        .volume_ids(vol)
        .send()
        .await
        .unwrap();
    out.volumes()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("kafka-agent:volume"))
        .and_then(|t| t.value())
        .map(str::to_string)
}

/// A fresh world with one 1 GiB volume for id 0, tagged new, and an instance that has claimed
/// and attached it.
async fn attached() -> (World, Cluster, String, String) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    plugged(&world, &inst, &vol).await;
    (world, cluster, vol, inst)
}

/// Waits until the volume shows on the host (attach returns when EC2 says attached).
async fn plugged(world: &World, inst: &str, vol: &str) {
    let serial = vol.replace('-', "");
    world
        .wait_until(Duration::from_secs(10), "the volume on the host", || {
            world.host_devices(inst).values().any(|s| *s == serial)
        })
        .await
        .unwrap();
}

// Item 7: blank is proven by reading.

#[tokio::test]
async fn a_device_that_cannot_be_read_is_never_formatted() {
    let (world, cluster, vol, inst) = attached().await;
    // The volume's image loses its content under the loop device: reads fail, and `blkid -p`
    // finds nothing (exit 2), as it does on a blank device.
    let img = image(&world, &vol);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(0)
        .unwrap();

    let (code, stderr) = cluster.mount(&world, &inst).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("[unreadable_device]"), "{stderr}");
    assert!(stderr.contains(&vol), "names the volume: {stderr}");
    assert!(stderr.contains("nvme1n1"), "names the device: {stderr}");
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        0,
        "the device was written to"
    );
    assert_eq!(state_tag(&world, &vol).await.as_deref(), Some("new"));
}

#[tokio::test]
async fn data_without_a_filesystem_signature_is_never_formatted() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    // The volume holds data no probe recognises (a filesystem whose superblock was wiped,
    // say) near its end; its first MiB is zeros.
    let img = image(&world, &vol);
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"00000000000000000042.log", (1 << 30) - 300_000)
        .unwrap();
    drop(f);
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();

    let (code, stderr) = cluster.mount(&world, &inst).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("[unrecognised_data]"), "{stderr}");
    assert!(stderr.contains(&vol), "{stderr}");
    let probe = kafka_agent::storage::mount::probe(&device(&world, &inst)).unwrap();
    assert_eq!(probe, None, "the volume was formatted");
    let mut tail = vec![0u8; 24];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&img).unwrap(),
        &mut tail,
        (1 << 30) - 300_000,
    )
    .unwrap();
    assert_eq!(tail, b"00000000000000000042.log");
    assert_eq!(state_tag(&world, &vol).await.as_deref(), Some("new"));
}
