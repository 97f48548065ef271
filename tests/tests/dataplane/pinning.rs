//! Pinned state: `--replace` updates the pinned link in place.

use lb_testbed::harness::{AttachedMode, pinned_link_info};

use super::*;

/// Removes a bpffs pin directory when the test ends, passed or not.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--replace`: the new program goes onto the pinned link itself (same link, same pin
/// file), so the interface never loses its XDP program during the swap.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn replace_updates_the_pinned_link_in_place() {
    let netns = test_netns();
    netns.enter(|| {
        let pins = PinDir(format!("/sys/fs/bpf/lbdp-replace-{}", std::process::id()).into());

        let mut old = Harness::load_pinned(CONFIG, &pins.0, false).expect("load");
        old.attach(EXT_IF, Some(AttachedMode::Generic))
            .expect("attach");
        old.release();
        drop(old);
        let path = pins.0.join("link_generic_ext0");
        let (link_before, program_before) = pinned_link_info(&path).unwrap();

        let mut new = Harness::load_pinned(CONFIG, &pins.0, true).expect("adopt");
        let adopted = new.adopt_links(true).expect("replace the program");
        assert_eq!(adopted, vec![("ext0".to_string(), AttachedMode::Generic)]);
        let new_program = new.program_id().unwrap();
        assert_ne!(new_program, program_before);
        let (link_after, program_after) = pinned_link_info(&path).unwrap();
        assert_eq!(link_after, link_before, "the same link, still pinned");
        assert_eq!(program_after, new_program, "now running the new program");

        new.detach_all();
        assert!(!path.exists(), "detach removes the link pin");
    });
}

/// A restarted daemon finds a flooded service's automatic SYN cookies in the pinned
/// service entry and keeps them on (the first apply does not switch them off).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_restart_keeps_automatic_syn_cookies_on() {
    use lb_common::{SERVICE_FLAG_COOKIE_ACKS, SERVICE_FLAG_SYN_COOKIES};
    use lb_testbed::harness::Overrides;
    let on = SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS;
    let netns = test_netns();
    netns.enter(move || {
        let pins = PinDir(format!("/sys/fs/bpf/lbdp-cookies-{}", std::process::id()).into());
        let mut old = Harness::load_pinned(CONFIG, &pins.0, false).expect("load");
        old.apply_config(CONFIG).expect("program");
        let flooded = Overrides {
            syn_cookies: [("web".to_string(), on)].into(),
            ..Overrides::default()
        };
        old.apply_overrides(&flooded).expect("cookies on");
        old.release();
        drop(old);

        let mut new = Harness::load_pinned(CONFIG, &pins.0, true).expect("adopt");
        new.adopt_table().expect("read the pinned tables");
        let resumed = new.table().syn_cookie_flags();
        assert_eq!(resumed, flooded.syn_cookies);
        // The daemon's first apply carries them as overrides (daemon/mod.rs).
        let overrides = Overrides {
            syn_cookies: resumed,
            ..Overrides::default()
        };
        new.apply_overrides(&overrides).expect("first apply");
        let (verdict, _) = new.run(&Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_TX, "still answered with a cookie");
        assert!(new.flows().is_empty());
        new.detach_all();
    });
}
