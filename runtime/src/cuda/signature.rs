//! Checks that a PTX module's entry points take exactly the arguments the runtime will pass for a
//! kernel, before anything is launched (pure text inspection, no driver calls).
//!
//! An artifact is code, to be trusted like a shared library; this check catches the honest
//! mistakes: PTX from another rule, flag set or format, or a hand-edited kernel description, any of
//! which would otherwise make a launch read arguments that were never passed.

use super::error::CudaError;
use optc_kernel::artifact::PtxModule;
use optc_kernel::table::TableLayout;
use optc_kernel::Kernel;

/// The parameter types (`u64`, `f32`, ...) of entry `name`, in order.
fn entry_params(source: &str, name: &str) -> Option<Vec<String>> {
    let head = format!(".entry {name}(");
    let start = source.find(&head)? + head.len();
    let end = start + source[start..].find(')')?;
    Some(
        source[start..end]
            .split(',')
            .filter_map(|p| {
                let mut words = p.split_whitespace();
                (words.next()? == ".param")
                    .then(|| words.next().map(|t| t.trim_start_matches('.').to_string()))?
            })
            .collect(),
    )
}

/// Errors unless the vector, scalar and multi-tensor entries of `ptx` fit `kernel`.
pub(crate) fn check(kernel: &Kernel, ptx: &PtxModule) -> Result<(), CudaError> {
    let mismatch = |reason: String| CudaError::PtxMismatch {
        rule: kernel.rule.clone(),
        reason,
    };
    let buffers = kernel.buffers().len();
    let mut direct: Vec<String> = vec!["u64".into(); buffers + 1];
    direct.extend(std::iter::repeat_n(
        "f32".to_string(),
        kernel.stages[0].uniforms.len(),
    ));
    for entry in [&ptx.vector_entry, &ptx.scalar_entry] {
        let params = entry_params(&ptx.source, entry)
            .ok_or_else(|| mismatch(format!("no entry `{entry}`")))?;
        if params != direct {
            return Err(mismatch(format!(
                "entry `{entry}` takes {} parameters ({}), the kernel passes {} buffers, n and {} uniforms",
                params.len(),
                params.join(", "),
                buffers,
                kernel.stages[0].uniforms.len()
            )));
        }
    }
    let multi = entry_params(&ptx.source, &ptx.multi_entry)
        .ok_or_else(|| mismatch(format!("no entry `{}`", ptx.multi_entry)))?;
    if multi != vec!["u64".to_string(); 4] {
        return Err(mismatch(format!(
            "entry `{}` takes ({}), expected (table, chunks, chunk count, chunk size)",
            ptx.multi_entry,
            multi.join(", ")
        )));
    }
    let stride = TableLayout::of(kernel).stride();
    let record = format!("Multi-tensor table record: {stride} bytes");
    if !ptx.source.contains(&record) {
        return Err(mismatch(format!(
            "its multi-tensor table record is not the {stride} bytes this kernel's layout needs"
        )));
    }
    Ok(())
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    fn ptx_of(rule: &str, flags: &[(&str, bool)]) -> (Kernel, PtxModule) {
        let k = optc_compiler::stdlib::rule(rule)
            .and_then(Result::ok)
            .and_then(|r| r.specialize(flags).ok())
            .unwrap_or_else(|| panic!("{rule}"));
        let ptx = optc_compiler::backend::ptx::emit(&k, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        (k, ptx)
    }

    #[test]
    fn optc_ptx_fits_its_kernel() {
        for rule in optc_compiler::stdlib::names() {
            let (k, ptx) = ptx_of(rule, &[]);
            check(&k, &ptx).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn ptx_of_another_flag_set_or_rule_is_refused() {
        let (k, _) = ptx_of("adam", &[]);
        let (_, amsgrad) = ptx_of("adam", &[("amsgrad", true)]);
        let (_, sgd) = ptx_of("sgd", &[]);
        for other in [amsgrad, sgd] {
            let mut ptx = other;
            // Same entry names as adam's, so only the signature can tell.
            ptx.source = ptx.source.replace("optc_sgd_", "optc_adam_");
            ptx.vector_entry = ptx.vector_entry.replace("optc_sgd_", "optc_adam_");
            ptx.scalar_entry = ptx.scalar_entry.replace("optc_sgd_", "optc_adam_");
            ptx.multi_entry = ptx.multi_entry.replace("optc_sgd_", "optc_adam_");
            let err = check(&k, &ptx)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("does not fit rule `adam`"), "{err}");
        }
    }
}
