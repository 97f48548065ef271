//! The instance: its name, interfaces and control socket.

use super::*;

#[test]
fn empty_attach_is_refused() {
    assert_refused(
        "[interfaces]\n\nattach = []\n",
        "attach = []",
        "interfaces.attach must list at least one interface",
    );
}

#[test]
fn duplicate_interface_is_refused() {
    let error = assert_refused(
        "[interfaces]\nattach = [\n  \"eth0\",\n  \"eth1\",\n  \"eth0\",\n]\n",
        "\"eth0\"",
        "interface \"eth0\" is listed twice",
    );
    assert_eq!(error.column, 3);
}

#[test]
fn invalid_interface_name_is_refused() {
    for name in [
        "",
        "a/b",
        "a b",
        "eth0:1",
        ".",
        "..",
        "tab\\t",
        "sixteen-chars-xx",
    ] {
        assert_refused(
            &format!("[interfaces]\nattach = [\"eth0\",\n\"{name}\"]\n"),
            &format!("\"{name}\"]"),
            "invalid interface name",
        );
    }
    let longest = parse("[interfaces]\nattach = [\"fifteen-chars-x\"]\n").unwrap();
    assert_eq!(longest.attach, ["fifteen-chars-x"]);
}

#[test]
fn too_many_interfaces_are_refused() {
    let names: Vec<String> = (0..=64).map(|i| format!("\"veth{i}\",\n")).collect();
    assert_refused(
        &format!("[interfaces]\nattach = [\n{}]\n", names.concat()),
        "\"veth64\"",
        "more than 64 interfaces",
    );
}

#[test]
fn invalid_instance_name_is_refused() {
    let long = "x".repeat(33);
    for name in ["", "a.b", "lb/x", "ünï", long.as_str()] {
        assert_refused(
            &format!("\nname = \"{name}\"\n[interfaces]\nattach = [\"eth0\"]\n"),
            "name = ",
            "invalid instance name",
        );
    }
    let longest = "x".repeat(32);
    let text = format!("name = \"{longest}\"\n[interfaces]\nattach = [\"eth0\"]\n");
    assert_eq!(parse(&text).unwrap().name, longest);
}

#[test]
fn bad_socket_is_refused() {
    let base = "[interfaces]\nattach = [\"eth0\"]\n[control]\n";
    assert_refused(
        &format!("{base}socket = \"\"\n"),
        "socket = ",
        "control.socket must not be empty",
    );
    let long = format!("/run/{}", "s".repeat(103));
    assert_refused(
        &format!("{base}socket = \"{long}\"\n"),
        "socket = ",
        "control.socket is 108 bytes long",
    );
    let longest = format!("/run/{}", "s".repeat(102));
    let config = parse(&format!("{base}socket = \"{longest}\"\n")).unwrap();
    assert_eq!(config.socket, Path::new(&longest));
}

#[test]
fn check_interfaces_points_at_the_missing_one() {
    let text = "[interfaces]\nattach = [\n  \"lb-ext\",\n  \"lb-int\",\n]\n";
    let config = parse(text).unwrap();
    assert_eq!(config.check_interfaces(|_| true), Ok(()));
    let error = config
        .check_interfaces(|name| name != "lb-int")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "/etc/lb/test.toml:{}:3: interface \"lb-int\" does not exist",
            first_line_of(text, "lb-int")
        )
    );
    let error = config.check_interfaces(|_| false).unwrap_err();
    assert_eq!(
        (error.line, error.column),
        (first_line_of(text, "lb-ext"), 3)
    );
}
