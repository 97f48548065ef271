//! Locking shared state without giving up on a poisoned lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a thread panicked while holding it.
///
/// The daemon's shared state (the controller, the cluster router's engine) stays
/// consistent between its methods: a panic inside one leaves at worst a half-finished
/// operation that the next reapply or tick redoes. Refusing every later request, or
/// stopping the health, GC and cluster loops, would instead leave the data path running
/// unmanaged, so every lock in the daemon recovers the poisoned guard and goes on.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_the_value() {
        let shared = std::sync::Arc::new(Mutex::new(1));
        let holder = shared.clone();
        let _ = std::thread::spawn(move || {
            let mut value = holder.lock().unwrap();
            *value = 2;
            panic!("poison the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        assert_eq!(*lock(&shared), 2);
    }
}
