//! `floor`: one and three no-op wasm filters in each host: what running a wasm filter
//! costs a host before the filter does anything (the floor under the chain).

use crate::context::Ctx;
use crate::hosts::{envoy_noops, noop_filters, start_envoy, start_portcullis};
use crate::measure::{Load, Run, compare, target};

/// One and three filters that do nothing, in both hosts: the per-filter cost of the
/// host itself, which no filter can go under.
pub fn run(ctx: &Ctx) {
    let a = &ctx.a;
    let p_none = start_portcullis(ctx, "none", &[], &[], &[]);
    let p_one = start_portcullis(ctx, "noop1", &noop_filters(1), &[], &[]);
    let p_three = start_portcullis(ctx, "noop3", &noop_filters(3), &[], &[]);
    let e_none = start_envoy(&envoy_noops(ctx, 0), &[]);
    let e_one = start_envoy(&envoy_noops(ctx, 1), &[]);
    let e_three = start_envoy(&envoy_noops(ctx, 3), &[]);
    let targets = vec![
        target("portcullis", &p_none),
        target("portcullis + 1 no-op", &p_one),
        target("portcullis + 3 no-ops", &p_three),
        target("envoy", &e_none),
        target("envoy + 1 no-op", &e_one),
        target("envoy + 3 no-ops", &e_three),
    ];
    let m = compare(
        "No-op wasm filters: the hosts' own cost per filter",
        &targets,
        &Load::headers(&[]),
        a,
    );
    let per_filter =
        |none: &Run, three: &Run| (1e6 / three.rps_per_cpu() - 1e6 / none.rps_per_cpu()) / 3.0;
    println!(
        "\n| host | 1 no-op / none, req/s | 3 no-ops / none, req/s | CPU µs per no-op filter per request |"
    );
    println!("|---|---|---|---|");
    for (name, i) in [("portcullis", 0), ("envoy", 3)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} |",
            m[i + 1].rps / m[i].rps,
            m[i + 2].rps / m[i].rps,
            per_filter(&m[i], &m[i + 2])
        );
    }
}
