//! TOML syntax, types, unknown and missing keys: refused by serde, with positions.

use super::*;

#[test]
fn toml_syntax_error_is_refused() {
    // Unterminated array: found at the end of the file, on the line after the last.
    let text = "[interfaces]\nattach = [\"eth0\"\n";
    let error = assert_refused_on(
        text,
        text.lines().count() + 1,
        "invalid array, expected `]`",
    );
    assert!(!error.to_string().contains('\n'));
    assert_refused("name = \"a\"\nname = \"b\"\n", "name = ", "duplicate key");
}

#[test]
fn wrong_type_is_refused() {
    assert_refused(
        &with_service("port = \"8080\"\n"),
        "\"8080\"",
        "invalid type: string",
    );
    assert_refused(
        "name = 3\n[interfaces]\nattach = [\"eth0\"]\n",
        "name = 3",
        "invalid type",
    );
    assert_refused(
        "[interfaces]\nattach = \"eth0\"\n",
        "attach",
        "invalid type",
    );
    assert_refused(
        "[interfaces]\nattach = [\"eth0\"]\nxdp_mode = \"fast\"\n",
        "xdp_mode",
        "unknown variant `fast`",
    );
    assert_refused(
        &with_service("[[service]]\nname = \"x\"\nvip = \"198.18.1.300\"\n"),
        "198.18.1.300",
        "invalid IPv4 address",
    );
}

#[test]
fn unknown_key_is_refused() {
    assert_refused(
        "colour = \"red\"\n[interfaces]\nattach = [\"eth0\"]\n",
        "colour",
        "unknown field `colour`",
    );
    assert_refused(
        &with_service("wieght = 2\n"),
        "wieght",
        "unknown field `wieght`",
    );
    assert_refused(
        &with_service("[snat]\nport = 1\n"),
        "port = 1\n",
        "unknown field `port`",
    );
    assert_refused(
        "[interfaces]\nattach = [\"eth0\"]\n[[services]]\nname = \"web\"\n",
        "[[services]]",
        "unknown field `services`",
    );
}

#[test]
fn missing_required_key_is_refused() {
    // A missing top-level table is reported at the start of the file.
    assert_refused_on("name = \"lb\"\n", 1, "missing field `interfaces`");
    assert_refused(
        "[interfaces]\nxdp_mode = \"auto\"\n",
        "[interfaces]",
        "missing field `attach`",
    );
    assert_refused(
        &with_service("\n[[service]]\nname = \"api\"\nport = 443\n"),
        "[[service]]",
        "missing field `vip`",
    );
    assert_refused(
        &with_service("[[service.backend]]\nport = 81\n"),
        "[[service.backend]]",
        "missing field `address`",
    );
}
