#!/usr/bin/env python3
"""The summary lines of the GPU check (`run`, docs/cuda.md "The GPU check"): one line per check,
read from what the check printed. Standard library only.

    lines.py tests NAME OUTPUT RC SECONDS      a test binary's libtest output
    lines.py fidelity OUTPUT RC                the cuda_fidelity output: worst error per backend
    lines.py optc OUTPUT RC [PROBE]            `optc bench --json` (its last line); PROBE names the
                                               probe (default: in-run D2D copy)
    lines.py torch OUTPUT RC RESULTS           torch_adamw_cuda.py's JSON lines, each against the
                                               optc result of the same shape in RESULTS (JSON lines)

Each prints one line per check, starting PASS or FAIL, and exits 1 if any is FAIL. An RC of 124
or 137 is a check stopped at its time limit, 125 one never started for lack of time.
"""

import json
import re
import sys


def stopped(rc):
    """Why a check has no result, or None if it ran to the end."""
    return {124: "stopped at its time limit", 137: "killed at its time limit", 125: "not started: no time left"}.get(rc)


def last_json(text):
    """The last line of `text` that parses as a JSON object, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def first_error(text):
    """The first line that looks like the reason for a failure, shortened."""
    for line in text.splitlines():
        if re.search(r"panicked at|error|Error|FAILED|not found|No such", line):
            return line.strip()[:200]
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1].strip()[:200] if lines else "no output"


def shape(elements, tensors):
    return f"n={elements} ({tensors} tensor{'s' if tensors != 1 else ''})"


def tests(name, text, rc, seconds):
    counts = {"passed": 0, "failed": 0, "ignored": 0}
    results = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
    for p, f, i in results:
        counts["passed"] += int(p)
        counts["failed"] += int(f)
        counts["ignored"] += int(i)
    skipped = len(re.findall(r"^SKIPPED", text, re.M))
    detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['ignored']} ignored"
    if skipped:
        detail += f", {skipped} printed SKIPPED"
    detail += f" ({seconds} s)"
    why = stopped(rc)
    if why:
        return False, f"FAIL test {name}: {why} after {seconds} s; {detail}"
    if rc != 0 or not results or counts["failed"]:
        failing = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
        hint = f"; failing: {', '.join(failing[:5])}" if failing else f"; {first_error(text)}"
        return False, f"FAIL test {name}: exit {rc}, {detail}{hint}"
    return True, f"PASS test {name}: {detail}"


def fidelity(text, rc):
    # tests/fidelity.rs prints "BACKEND worst RULE: ERR (CASE QUANTITY)" for every rule.
    worst = {}
    for backend, rule, err, at in re.findall(r"^(cuda\S*) worst (\S+): (\S+) \((.*)\)$", text, re.M):
        e = float(err)
        b = worst.setdefault(backend, {"rules": 0, "err": -1.0, "at": ""})
        b["rules"] += 1
        if e > b["err"] or e != e:
            b["err"], b["at"] = e, at
    why = stopped(rc)
    parts = [f"{b}: {w['rules']} rules, worst {w['err']:.1e} ({w['at']})" for b, w in sorted(worst.items())]
    detail = "; ".join(parts) if parts else "no per-rule results printed"
    if why:
        return False, f"FAIL fidelity cuda: {why}; {detail}"
    if rc != 0 or not worst:
        failing = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
        hint = f"failing: {', '.join(failing)}" if failing else first_error(text)
        return False, f"FAIL fidelity cuda: exit {rc}; {detail}; {hint}"
    return True, f"PASS fidelity cuda (budget 1e-5, docs/fidelity.md): {detail}"


def optc(text, rc, probe="in-run D2D copy"):
    why = stopped(rc)
    r = last_json(text) if rc == 0 else None
    if why or r is None:
        return False, f"FAIL bench optc: {why or f'exit {rc}'}; {first_error(text)}"
    flags = ",".join(f"{n}={v}" for n, v in r.get("flags", []) if v)
    label = r["rule"] + (f"[{flags}]" if flags else "")
    return True, (
        f"PASS bench optc {label} {shape(r['elements'], r['tensors'])}: {r['step_s'] * 1e3:.3f} ms/step, "
        f"{r['bytes_per_s'] / 1e9:.0f} GB/s; {probe} {r['probe_s'] * 1e3:.3f} ms, "
        f"{r['probe_bytes_per_s'] / 1e9:.0f} GB/s; kernel/probe {r['fraction_of_probe']:.2f}"
    )


def torch(text, rc, results_path):
    optc_runs = {}
    try:
        with open(results_path) as f:
            for r in json_lines(f.read()):
                # optc bench's objects have a probe; torch_adamw_cuda.py's have a copy instead.
                if "probe_s" in r and r.get("rule") == "adamw" and not any(v for _, v in r.get("flags", [])):
                    optc_runs[(r["elements"], r["tensors"])] = r
    except OSError:
        pass
    why = stopped(rc)
    out = []
    ok = rc == 0
    runs = json_lines(text)
    for r in runs:
        if "error" in r:
            where = r.get("config", "")
            ok = False
            out.append(f"FAIL bench torch {where}: {r['error'][:200]}")
            continue
        where = shape(r["elements"], r["tensors"])
        line = (
            f"PASS bench {r['impl']} {where}: {r['step_s'] * 1e3:.3f} ms/step, "
            f"{r['bytes_per_s'] / 1e9:.0f} GB/s; torch D2D copy {r['copy_s'] * 1e3:.3f} ms; "
            f"torch/copy {r['fraction_of_copy']:.2f}"
        )
        o = optc_runs.get((r["elements"], r["tensors"]))
        line += f"; optc speed / torch {r['step_s'] / o['step_s']:.2f}" if o else "; no optc run of this shape"
        out.append(line)
    if why or not runs or rc != 0:
        out.append(f"FAIL bench torch: {why or f'exit {rc}'}; {first_error(text)}")
        ok = False
    return ok, "\n".join(out)


def main(argv):
    kind = argv[1] if len(argv) > 1 else ""
    try:
        if kind == "tests":
            _, _, name, path, rc, secs = argv
            ok, line = tests(name, open(path, errors="replace").read(), int(rc), secs)
        elif kind == "fidelity":
            _, _, path, rc = argv
            ok, line = fidelity(open(path, errors="replace").read(), int(rc))
        elif kind == "optc":
            path, rc, *probe = argv[2:]
            if len(probe) > 1:
                raise ValueError("optc takes OUTPUT RC [PROBE]")
            ok, line = optc(open(path, errors="replace").read(), int(rc), *probe)
        elif kind == "torch":
            _, _, path, rc, results = argv
            ok, line = torch(open(path, errors="replace").read(), int(rc), results)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (ValueError, OSError, KeyError, TypeError) as e:
        print(f"FAIL {kind}: cannot read the check's output: {e}")
        return 1
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
