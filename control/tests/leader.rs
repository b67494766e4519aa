//! Leader election against a real `skiff control`: one holder at a time, takeover on expiry.

use skiff_control::leader::{Attempt, LeaderConfig, run_as_leader, try_acquire};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn cfg(identity: &str) -> LeaderConfig {
    let mut c = LeaderConfig::new("test-lease", identity);
    c.lease_duration = Duration::from_secs(2);
    c.retry_period = Duration::from_millis(200);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_takeover_after_expiry() {
    let control = tokio::task::block_in_place(skiff_tests::Control::start).expect("skiff control");
    let client = control.client().await.expect("client");
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), "kube-system");

    assert_eq!(try_acquire(&api, &cfg("a")).await.unwrap(), Attempt::Leading);
    assert_eq!(try_acquire(&api, &cfg("b")).await.unwrap(), Attempt::Following { holder: "a".into() });
    // Renewing keeps it.
    assert_eq!(try_acquire(&api, &cfg("a")).await.unwrap(), Attempt::Leading);

    // "a" stops renewing; "b" takes over once the 2 s lease has expired, not before.
    let leading = Arc::new(AtomicBool::new(false));
    let flag = leading.clone();
    let started = tokio::time::Instant::now();
    let b = tokio::spawn(run_as_leader(
        client.clone(),
        cfg("b"),
        || async { std::future::pending::<anyhow::Result<()>>().await },
        move |l| flag.store(l, Ordering::SeqCst),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!leading.load(Ordering::SeqCst), "b must not lead while a's lease is valid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !leading.load(Ordering::SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "b did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500), "took over before expiry");
    let lease = api.get("test-lease").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // Now "a" is the follower.
    assert_eq!(try_acquire(&api, &cfg("a")).await.unwrap(), Attempt::Following { holder: "b".into() });
    b.abort();
}
