//! Maglev rings under run-time weight changes.

use lb_testbed::harness::Overrides;

use super::*;

/// A drain, a health-down or a weight override changes a service's ring contents but
/// never its size or place in the pool: a new size would remap every flow of the
/// service and need a region the config check never budgeted.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn run_time_weight_changes_keep_the_ring_size_and_region() {
    let netns = test_netns();
    netns.enter(|| {
        // Weights 100 and 1 need 10,100 slots (16,381); without the light backend the
        // service would fit in 1,021, with the light one raised to 100 in 1,021 too.
        let config = r#"
name = "dptest"
[interfaces]
attach = ["ext0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
weight = 100
[[service.backend]]
address = "198.19.0.12"
weight = 1
"#;
        let mut h = Harness::load(config).expect("load and apply");
        let region = |h: &Harness| {
            let s = h.table().services().next().unwrap();
            (s.rings, s.effective_weights.clone())
        };
        let (rings, _) = region(&h);
        assert_eq!(rings.size, 16_381);
        let light = (SERVER2, 80);

        let mut down = Overrides::default();
        down.down.insert(("web".to_string(), light));
        h.apply_overrides(&down).expect("down");
        assert_eq!(region(&h), (rings, vec![100, 0]));

        let mut drained = Overrides::default();
        drained.drained.insert(light);
        h.apply_overrides(&drained).expect("drain");
        assert_eq!(region(&h), (rings, vec![100, 0]));

        let mut heavier = Overrides::default();
        heavier.weights.insert(("web".to_string(), light), 100);
        h.apply_overrides(&heavier).expect("weight");
        assert_eq!(region(&h), (rings, vec![100, 100]));

        // The live ring really changed: half of it now holds the raised backend.
        let live = h.first_service_ring().unwrap();
        let light_id = u64::from(h.table().backend_id(light).unwrap());
        let light_slots = live.iter().filter(|&&id| id == light_id).count();
        assert!((8_000..8_400).contains(&light_slots), "{light_slots}");
    });
}
