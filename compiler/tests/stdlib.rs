//! Every stdlib rule parses, checks cleanly and compiles for every flag set; the optimized IR of
//! each is snapshotted, and no uniform work is left in any kernel body.

use optc_compiler::{stdlib, Rule};
use optc_kernel::{BinaryOp, Expr, Kernel};

fn rules() -> Vec<Rule> {
    stdlib::names()
        .map(|n| match stdlib::rule(n) {
            Some(Ok(r)) => r,
            Some(Err(d)) => panic!("stdlib rule {n} does not compile:\n{d}"),
            None => panic!("missing {n}"),
        })
        .collect()
}

#[test]
fn stdlib_is_clean() {
    for r in rules() {
        assert!(r.warnings().is_empty(), "{}:\n{}", r.name(), r.warnings());
        assert!(!r.doc().is_empty(), "{} has no doc comment", r.name());
    }
}

/// Whether any body node is uniform work: an op whose operands are all arguments or literals.
fn uniform_work_in_body(k: &Kernel) -> Vec<String> {
    let leafish = |h: optc_kernel::Handle<Expr>| {
        matches!(
            k.stages[0].body[h],
            Expr::Uniform(_) | Expr::Const(_) | Expr::Bool(_)
        )
    };
    k.stages[0]
        .body
        .iter()
        .filter(|(_, e)| {
            let ops: Vec<_> = e.operands().collect();
            !ops.is_empty() && ops.iter().all(|o| leafish(*o))
        })
        .map(|(h, e)| format!("%{} = {e:?}", h.index()))
        .collect()
}

#[test]
fn no_uniform_work_or_pow_in_any_body() {
    for r in rules() {
        for flags in r.flag_sets() {
            let k = r
                .specialize_values(&flags)
                .unwrap_or_else(|e| panic!("{e}"));
            let bad = uniform_work_in_body(&k);
            assert!(
                bad.is_empty(),
                "{} {:?}: uniform work in body: {bad:?}\n{k}",
                r.name(),
                flags
            );
            let pow = k.stages[0]
                .body
                .iter()
                .any(|(_, e)| matches!(e, Expr::Binary(BinaryOp::Pow, ..)));
            assert!(!pow, "{} {:?} has a per-element pow\n{k}", r.name(), flags);
        }
    }
}

#[test]
fn optimized_ir_snapshots() {
    for r in rules() {
        // One snapshot per flag set whose kernel differs from the defaults' kernel.
        let mut seen: Vec<String> = Vec::new();
        for flags in r.flag_sets() {
            let k = r
                .specialize_values(&flags)
                .unwrap_or_else(|e| panic!("{e}"));
            let text = k.to_string();
            let body = text.split("\n").skip(1).collect::<Vec<_>>().join("\n");
            if seen.contains(&body) {
                continue;
            }
            seen.push(body);
            let tag: Vec<String> = r
                .flags()
                .iter()
                .zip(&flags)
                .filter(|(_, v)| **v)
                .map(|(f, _)| f.name.clone())
                .collect();
            let name = if tag.is_empty() {
                r.name().to_string()
            } else {
                format!("{}+{}", r.name(), tag.join("+"))
            };
            insta::assert_snapshot!(name, text);
        }
    }
}
