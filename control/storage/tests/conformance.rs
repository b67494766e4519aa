//! Runs the shared conformance suite (`skiff_storage::conformance`) against both backends.
//!
//! Embedded: one fresh store per check, so each check is its own test. etcd: one real etcd server
//! (started here, killed on drop) shared by all checks, run in order by `run_all` — compaction is
//! global and runs last — so starting etcd is paid once.

use std::sync::Arc;

use skiff_storage::conformance::{self, EtcdProcess};
use skiff_storage::{EmbeddedStore, EtcdStore, Store};

fn embedded() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, Arc::new(store))
}

async fn run_embedded(name: &str) {
    let (_dir, store) = embedded();
    let (_, check) = conformance::CHECKS.iter().find(|(n, _)| *n == name).expect("check exists");
    check(store, conformance::prefix_for(name)).await.unwrap_or_else(|e| panic!("{name}: {e:#}"));
}

macro_rules! embedded_checks {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_embedded(stringify!($name)).await;
                }
            )*

            /// Every check in `CHECKS` has a test above.
            #[test]
            fn all_checks_covered() {
                let covered = [$(stringify!($name)),*];
                for (name, _) in skiff_storage::conformance::CHECKS {
                    assert!(covered.contains(name), "no embedded test for check {name}");
                }
            }
        }
    };
}

embedded_checks!(
    revisions_strictly_increase,
    create_twice_is_already_exists,
    update_is_compare_and_swap,
    delete_is_compare_and_swap,
    list_is_sorted_and_prefix_exact,
    list_at_past_revision,
    watch_replays_then_streams_live,
    watch_from_now_sees_only_new_events,
    slow_watcher_misses_nothing,
    concurrent_creates_get_distinct_revisions,
    concurrent_cas_has_one_winner,
    compaction,
);

/// The whole suite, in order, on one embedded store (as the etcd run does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_all_checks_on_one_store() {
    let (_dir, store) = embedded();
    conformance::run_all(store).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_all_checks() {
    let etcd = EtcdProcess::start().await.unwrap_or_else(|e| panic!("cannot run the etcd conformance suite: {e:#}"));
    let store = EtcdStore::connect(&etcd.endpoints()).await.expect("connect to etcd");
    let result = conformance::run_all(Arc::new(store)).await;
    if let Err(e) = result {
        panic!("{e:#}\n--- etcd log tail ---\n{}", etcd.log_tail());
    }
}
