//! The controller reads the flow table in batches (`BPF_MAP_LOOKUP_BATCH`): every entry
//! comes back once, with its value, whatever the batch size.

use std::collections::HashMap;

use lb_common::FlowEntry;

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_batch_read_returns_every_entry_once() {
    with_harness(|h| {
        const ENTRIES: u32 = 3_000;
        let mut written = HashMap::new();
        for i in 0..ENTRIES {
            let key = flow_key(
                Ipv4Addr::from(u32::from(CLIENT) + i / 1000),
                10_000 + (i % 1000) as u16,
                VIP,
                80,
                IPPROTO_TCP,
            );
            let entry = FlowEntry {
                backend_id: i,
                state: FLOW_STATE_ESTABLISHED,
                ..FlowEntry::default()
            };
            h.set_flow(key, entry).unwrap();
            written.insert(key, entry);
        }
        assert_eq!(h.flow_count(), ENTRIES as usize, "walked key by key");
        // Several chunk sizes: many small batches, an odd size, one batch for all.
        for chunk in [1, 97, 16_384] {
            let read = h.flows_batched(chunk).unwrap();
            assert_eq!(read.len(), ENTRIES as usize, "chunk {chunk}");
            let read: HashMap<_, _> = read.into_iter().collect();
            assert_eq!(read, written, "chunk {chunk}: the same entries and values");
        }
        assert_eq!(h.flows().len(), ENTRIES as usize);
    });
}
