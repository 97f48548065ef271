//! Ids freed by a reload take nothing along.

use lb_common::{BackendStats, ServiceStats, SessionEntry, SessionKey};
use lb_testbed::harness::possible_cpus;

use super::*;

/// Freed service and backend ids take nothing along: their sessions go and their
/// per-CPU counters are zeroed, and a service added in the same apply does not get a
/// removed service's id.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn freed_ids_lose_their_sessions_and_counters() {
    let netns = test_netns();
    netns.enter(|| {
        let service = |name: &str, port: u16, backends: &[Ipv4Addr]| {
            let mut text = format!(
                "[[service]]\nname = \"{name}\"\nvip = \"198.18.1.10\"\nport = {port}\n\
                 snat_ip = \"198.19.1.1\"\naffinity_timeout = 600\n"
            );
            for b in backends {
                text += &format!("[[service.backend]]\naddress = \"{b}\"\n");
            }
            text
        };
        let config = |services: &str| {
            format!("name = \"dptest\"\n[interfaces]\nattach = [\"ext0\"]\n{services}")
        };
        let mut h =
            Harness::load(&config(&service("a", 80, &[SERVER1, SERVER2]))).expect("load and apply");
        let a_id = h.table().services().next().unwrap().id;
        let b1 = h.table().backend_id((SERVER1, 80)).unwrap();
        let b2 = h.table().backend_id((SERVER2, 80)).unwrap();
        let cpus = possible_cpus().unwrap();
        let session = |client: u8, service_id: u32, backend_id: u32| {
            let key = SessionKey {
                service_id,
                client_ip: u32::from(Ipv4Addr::new(198, 18, 0, client)).to_be(),
            };
            let entry = SessionEntry {
                backend_id,
                _pad: 0,
                created_ns: 1,
                last_seen_ns: 1,
            };
            (key, entry)
        };
        for (key, entry) in [session(2, a_id, b1), session(3, a_id, b2)] {
            h.insert_session(key, entry).unwrap();
        }
        let counted = BackendStats {
            packets: 5,
            bytes: 500,
            new_flows: 1,
            _reserved: 0,
        };
        h.set_backend_stats(b2, counted).unwrap();
        let service_counted = ServiceStats {
            packets: 7,
            ..ServiceStats::default()
        };
        h.set_service_stats(a_id, service_counted).unwrap();

        // SERVER2 leaves the service: its session and counters go, SERVER1's stay.
        h.apply_config(&config(&service("a", 80, &[SERVER1])))
            .expect("apply");
        let sessions: Vec<u32> = h
            .sessions()
            .unwrap()
            .iter()
            .map(|(_, entry)| entry.backend_id)
            .collect();
        assert_eq!(sessions, vec![b1]);
        assert_eq!(h.backend_stats(b2).unwrap(), BackendStats::default());
        assert_eq!(h.service_stats(a_id).unwrap().packets, 7 * cpus as u64);

        // Service a goes and b comes in one apply: b gets another id, a's sessions and
        // counters are gone.
        h.apply_config(&config(&service("b", 81, &[SERVER1])))
            .expect("apply");
        let b_id = h.table().services().next().unwrap().id;
        assert_ne!(b_id, a_id);
        assert!(h.sessions().unwrap().is_empty());
        assert_eq!(h.service_stats(a_id).unwrap(), ServiceStats::default());
    });
}
