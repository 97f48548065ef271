//! The daemon's end of `FLOW_EVENTS`: the data path's reports of created, changed and
//! removed flows (docs/scale-out.md, "Flow records"), read in batches when the ring
//! signals data, never by polling.

use aya::maps::{MapData, RingBuf};
use lb_common::FlowEvent;
use tokio::io::unix::AsyncFd;

use super::Dataplane;

/// Decodes one ring record; `None` for a record of the wrong size (a program of another
/// build writing into an adopted ring).
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    (bytes.len() == size_of::<FlowEvent>()).then(|| bytemuck::pod_read_unaligned(bytes))
}

/// Up to `max` events already in the ring, oldest first, without waiting.
pub fn drain(ring: &mut RingBuf<MapData>, max: usize) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    while events.len() < max {
        let Some(item) = ring.next() else {
            break;
        };
        if let Some(event) = decode(&item) {
            events.push(event);
        }
    }
    events
}

/// Waits on `FLOW_EVENTS` and hands out what the data path wrote, in batches.
pub struct FlowEventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl FlowEventReader {
    /// Must be called inside a tokio runtime (the ring's fd is registered with it).
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<FlowEventReader> {
        // SAFETY: the ring owns its map fd, which stays open and the same for as long
        // as the AsyncFd holds the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(FlowEventReader { ring })
    }

    /// Waits for at least one event, then returns it with whatever else is there, up
    /// to `max`. Returns an empty batch only if the ring's fd fails (logged).
    pub async fn next_batch(&mut self, max: usize) -> Vec<FlowEvent> {
        let max = max.max(1);
        loop {
            let mut guard = match self.ring.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    log::warn!("waiting on {}: {e}", lb_common::map_names::FLOW_EVENTS);
                    return Vec::new();
                }
            };
            let batch = drain(guard.get_inner_mut(), max);
            if !batch.is_empty() {
                return batch;
            }
            // Only the readiness seen by this guard is cleared: data that came after
            // the drain wakes the next wait.
            guard.clear_ready();
        }
    }
}

impl Dataplane {
    /// Hands `FLOW_EVENTS` to its reader (once; `None` afterwards).
    pub fn take_flow_events(&mut self) -> Option<RingBuf<MapData>> {
        self.flow_events.take()
    }

    /// Up to `max` events waiting in `FLOW_EVENTS`, without waiting (tests, and a
    /// daemon without a reader); empty once the ring was taken.
    pub fn read_flow_events(&mut self, max: usize) -> Vec<FlowEvent> {
        self.flow_events
            .as_mut()
            .map_or_else(Vec::new, |ring| drain(ring, max))
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FLOW_EVENT_CHANGED, FlowEntry, FlowKey, IPPROTO_TCP};

    use super::*;

    #[test]
    fn a_record_decodes_to_the_event_the_program_wrote() {
        let event = FlowEvent {
            kind: FLOW_EVENT_CHANGED,
            key: FlowKey::new(
                "198.18.0.2".parse().unwrap(),
                1000,
                "198.18.1.10".parse().unwrap(),
                80,
                IPPROTO_TCP,
            ),
            entry: FlowEntry {
                owner: 7,
                state: 2,
                ..FlowEntry::default()
            },
            ..FlowEvent::default()
        };
        let bytes = bytemuck::bytes_of(&event);
        assert_eq!(decode(bytes), Some(event));
        assert_eq!(decode(&bytes[1..]), None);
    }
}
