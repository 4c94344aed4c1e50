//! Every kernel the PTX tests walk (`ptx_ptxas`, `ptx_sim`): the stdlib rules in every flag
//! combination, rank class and option, their kernel variants, and the hand-built kernels.

use optc_compiler::passes::CompileOptions;
use optc_compiler::{stdlib, Kernel};
use optc_kernel::RankClass;

/// (label, kernel, at default flags): every stdlib rule (staged ones included) in every flag
/// combination and rank class, each also clipped by the global norm, loss-scaled, and both, with
/// its default flags (and the kernel variants the runtime picks between, of its default flag
/// set, loss-scaled too), then the hand-built kernels of this module.
pub fn kernels() -> Vec<(String, Kernel, bool)> {
    let mut out = Vec::new();
    for name in stdlib::names() {
        let rule = match stdlib::rule(name) {
            Some(Ok(rule)) => rule,
            other => panic!("stdlib rule {name} does not compile: {other:?}"),
        };
        let ranks = if rule.uses_rank() {
            vec![RankClass::Matrix, RankClass::Vector]
        } else {
            vec![RankClass::Any]
        };
        for rank in ranks {
            for (i, flags) in rule.flag_sets().into_iter().enumerate() {
                for (clip, loss_scale) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    if (clip || loss_scale) && i > 0 {
                        continue;
                    }
                    let options = CompileOptions {
                        clip,
                        loss_scale,
                        rank,
                    };
                    let kernel = rule
                        .specialize_values_with(&flags, &options)
                        .unwrap_or_else(|e| panic!("{name} {flags:?} {options:?}: {e}"));
                    let bits: String = flags.iter().map(|f| if *f { '1' } else { '0' }).collect();
                    let tag = format!(
                        "{rank:?}{}{}",
                        if clip { "-clip" } else { "" },
                        if loss_scale { "-scale" } else { "" }
                    );
                    out.push((format!("{name}-{bits}-{tag}"), kernel, i == 0 && !clip));
                    // The kernel variants the runtime picks between (the first flag set's, loss
                    // scaled too).
                    if i == 0 && !clip {
                        let conds = rule.conditions(&flags, &options).expect("ok");
                        for v in conds.variants().filter(|_| !conds.is_empty()) {
                            let k = rule
                                .specialize_variant(&flags, &options, v)
                                .unwrap_or_else(|e| panic!("{name} {v}: {e}"));
                            out.push((format!("{name}-{bits}-{tag}-{v}"), k, false));
                        }
                    }
                }
            }
        }
    }
    for kernel in super::all() {
        out.push((kernel.rule.replace(' ', "_"), kernel, true));
    }
    out
}
