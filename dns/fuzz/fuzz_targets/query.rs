//! The whole query path on arbitrary bytes, over UDP and TCP limits: the response cache, hickory's
//! parser, the catalog with the (apex-only) cluster zone, the encoder. Must never panic; any
//! response must carry the query's id and fit the transport.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_dns::server::{PathConfig, Shared};
use skiff_dns::zone::Zone;
use std::sync::OnceLock;
use std::time::Duration;

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = PathConfig {
            domain: "cluster.local".into(),
            upstreams: vec![],
            forward_timeout: Duration::from_millis(1),
            forward_cache: 16,
            answer_cache: 10_000,
            autopath: true,
        };
        let s = Shared::new(Zone::empty("cluster.local", 5), &cfg).expect("static config");
        s.synced.store(true, std::sync::atomic::Ordering::SeqCst);
        s
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fuzz_target!(|data: &[u8]| {
    let src = "10.244.0.5:40000".parse().expect("static address");
    for tcp in [false, true] {
        if let Some(r) = runtime().block_on(shared().answer(data, src, tcp)) {
            assert!(r.len() >= 12);
            assert_eq!(r[0..2], data[0..2]);
            assert!(tcp || r.len() <= 1232);
        }
    }
    let _ = skiff_dns::wire::min_ttl(data);
    let _ = skiff_dns::wire::truncate_message(data, 512);
});
