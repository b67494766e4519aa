//! The whole local query path on arbitrary bytes, over UDP and TCP limits: parse, look up in the
//! (apex-only) zone, build the response. Must never panic; any response must parse as a DNS header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_dns::server::{Forwarder, Outcome, Shared};
use skiff_dns::zone::Zone;
use std::sync::OnceLock;

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let s = Shared::new(
            Zone::empty("cluster.local", 5),
            Forwarder::new(vec![], std::time::Duration::from_millis(1), 16),
        );
        s.synced.store(true, std::sync::atomic::Ordering::SeqCst);
        s
    })
}

fuzz_target!(|data: &[u8]| {
    for tcp in [false, true] {
        if let Outcome::Reply(r) = shared().handle(data, tcp) {
            assert!(r.len() >= 12);
            assert!(tcp || r.len() <= 1232);
        }
    }
    let _ = skiff_dns::wire::min_ttl(data);
    let _ = skiff_dns::wire::truncate_message(data, 512);
});
