//! Flow events (`FLOW_EVENTS`) and flows installed from peers' records
//! (docs/scale-out.md, "Flow records", "Who may change what").

use super::*;

/// The verifier accepts both programs well under its budget; the counts are printed
/// for the record (`--nocapture`).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn programs_stay_well_under_the_verifier_budget() {
    with_harness(|h| {
        let counts = h.verified_instructions().unwrap();
        for (name, count) in &counts {
            println!("verified_instruction_count {name} = {count}");
            assert!(*count > 0 && *count < 500_000, "{name}: {count}");
        }
        assert_eq!(counts.len(), 2);
    });
}
