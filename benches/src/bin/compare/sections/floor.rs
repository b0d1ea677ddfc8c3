//! `floor`: one and three no-op wasm filters in each host: what running a wasm filter
//! costs a host before the filter does anything (the floor under the chain). Three
//! "bare" no-ops beside them (`portcullis_testbed::modules::bare_noop`: no SDK, every
//! callback returns at once), so what they cost is the host's part alone.

use crate::context::Ctx;
use crate::hosts::{copies, envoy_noops, envoy_with, noop_filters, start_envoy, start_portcullis};
use crate::measure::{Load, Run, compare, target};
use crate::tables::{Table, two};

// The targets, by label.
const P_NONE: &str = "portcullis";
const P_ONE: &str = "portcullis + 1 no-op";
const P_THREE: &str = "portcullis + 3 no-ops";
const P_BARE: &str = "portcullis + 3 bare no-ops";
const E_NONE: &str = "envoy";
const E_ONE: &str = "envoy + 1 no-op";
const E_THREE: &str = "envoy + 3 no-ops";
const E_BARE: &str = "envoy + 3 bare no-ops";

/// One and three filters that do nothing, and three bare ones, in both hosts: the
/// per-filter cost of the host itself, which no filter can go under.
pub fn run(ctx: &Ctx) {
    let a = &ctx.a;
    let bare = portcullis_testbed::modules::bare_noop();
    std::fs::write(ctx.dir.join("bare_noop.wasm"), bare).expect("bare_noop.wasm written");
    let p_none = start_portcullis(ctx, "none", &[], &[], &[]);
    let p_one = start_portcullis(ctx, "noop1", &noop_filters(1), &[], &[]);
    let p_three = start_portcullis(ctx, "noop3", &noop_filters(3), &[], &[]);
    let p_bare = start_portcullis(ctx, "bare3", &copies("bare_noop", 3), &[], &[]);
    let e_none = start_envoy(&envoy_noops(ctx, 0), &[]);
    let e_one = start_envoy(&envoy_noops(ctx, 1), &[]);
    let e_three = start_envoy(&envoy_noops(ctx, 3), &[]);
    let e_bare = start_envoy(&envoy_with(ctx, &copies("bare_noop", 3)), &[]);
    let targets = vec![
        target(P_NONE, &p_none),
        target(P_ONE, &p_one),
        target(P_THREE, &p_three),
        target(P_BARE, &p_bare),
        target(E_NONE, &e_none),
        target(E_ONE, &e_one),
        target(E_THREE, &e_three),
        target(E_BARE, &e_bare),
    ];
    let m = compare(
        "No-op wasm filters: the hosts' own cost per filter",
        &targets,
        &Load::headers(&[]),
        a,
    );
    let per_filter =
        |none: &Run, three: &Run| (1e6 / three.rps_per_cpu() - 1e6 / none.rps_per_cpu()) / 3.0;
    let mut t = Table::new(&[
        "host",
        "1 no-op / none, req/s",
        "3 no-ops / none, req/s",
        "3 bare no-ops / none, req/s",
        "CPU µs per no-op filter per request",
        "CPU µs per bare no-op",
    ]);
    for (host, none, one, three, bare) in [
        ("portcullis", P_NONE, P_ONE, P_THREE, P_BARE),
        ("envoy", E_NONE, E_ONE, E_THREE, E_BARE),
    ] {
        let (none, one, three, bare) = (&m[none], &m[one], &m[three], &m[bare]);
        t.row(&[
            host.to_owned(),
            two(one.rps / none.rps),
            two(three.rps / none.rps),
            two(bare.rps / none.rps),
            format!("{:.1}", per_filter(none, three)),
            format!("{:.1}", per_filter(none, bare)),
        ]);
    }
    t.print();
}
