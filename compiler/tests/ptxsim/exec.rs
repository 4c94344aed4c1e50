//! Runs a parsed entry over a grid: CTAs one after another, each CTA's threads scheduled
//! until they block at a warp collective (`shfl.sync`, `bar.warp.sync`) or a CTA barrier, which
//! then executes for the whole warp (or CTA) at once.

use super::float;
use super::parse::{Addr, Cmp, Entry, Inst, Kind, Module, Opnd, ShflMode, Space, Sreg, Ty, I2};
use super::parse::{CONST_BASE, SHARED_BASE};

/// Global memory: allocations at distinct, 256-byte aligned addresses far from 0.
#[derive(Default)]
pub struct Device {
    allocs: Vec<(u64, Vec<u8>)>,
    next: u64,
}

impl Device {
    /// Copies `bytes` to a new allocation starting `misalign` bytes past a 256-byte boundary;
    /// returns its address.
    pub fn alloc(&mut self, bytes: &[u8], misalign: u64) -> u64 {
        if self.next == 0 {
            self.next = 1 << 32;
        }
        let base = self.next + misalign;
        self.next = (base + bytes.len() as u64 + 4096).div_ceil(256) * 256;
        self.allocs.push((base, bytes.to_vec()));
        base
    }
    /// Allocates and fills with f32s.
    pub fn alloc_f32(&mut self, xs: &[f32], misalign: u64) -> u64 {
        let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.alloc(&bytes, misalign)
    }
    /// The allocation starting at `ptr`.
    pub fn bytes(&self, ptr: u64) -> &[u8] {
        &self
            .allocs
            .iter()
            .find(|(b, _)| *b == ptr)
            .expect("no allocation starts there")
            .1
    }
    /// The allocation at `ptr` read as f32s.
    pub fn read_f32(&self, ptr: u64) -> Vec<f32> {
        self.bytes(ptr)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn slice(&mut self, addr: u64, len: usize, align: u64) -> Result<&mut [u8], String> {
        if !addr.is_multiple_of(align) {
            return Err(format!(
                "misaligned global access: {len} bytes at {addr:#x} need {align}-byte alignment"
            ));
        }
        for (base, data) in &mut self.allocs {
            if addr >= *base && addr + len as u64 <= *base + data.len() as u64 {
                let at = (addr - *base) as usize;
                return Ok(&mut data[at..at + len]);
            }
        }
        Err(format!(
            "global access of {len} bytes at {addr:#x} is outside every allocation"
        ))
    }
}

/// A launch argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    U64(u64),
    U32(u32),
    F32(f32),
}

/// Counts of what a launch executed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub instructions: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Ready,
    /// Blocked at a collective (the pc of the instruction).
    Waiting,
    Done,
}

struct Thread {
    regs: Vec<u64>,
    /// Whether each register was written (reading one that was not is an error).
    defined: Vec<bool>,
    pc: usize,
    state: State,
}

/// Who last wrote a word of shared memory, and in which barrier interval.
#[derive(Clone, Copy, Default)]
struct Stamp {
    /// Thread index + 1 (0: never written).
    writer: u32,
    warp_epoch: u32,
    cta_epoch: u32,
}

struct Cta<'a> {
    entry: &'a Entry,
    module: &'a Module,
    params: &'a [u64],
    ctaid: u32,
    nctaid: u32,
    ntid: u32,
    shared: Vec<u8>,
    stamps: Vec<Stamp>,
    warp_epoch: Vec<u32>,
    cta_epoch: u32,
}

const STEP_LIMIT: u64 = 2_000_000_000;

/// Runs `entry` of `module` over `grid` CTAs of `block` threads.
pub fn launch(
    module: &Module,
    entry: &str,
    grid: u32,
    block: u32,
    args: &[Arg],
    dev: &mut Device,
) -> Result<Stats, String> {
    let e = module
        .entries
        .get(entry)
        .ok_or_else(|| format!("no entry `{entry}` in the module"))?;
    if args.len() != e.params.len() {
        return Err(format!(
            "`{entry}` takes {} parameters, launched with {}",
            e.params.len(),
            args.len()
        ));
    }
    let mut params = Vec::with_capacity(args.len());
    for ((name, ty), a) in e.params.iter().zip(args) {
        let v = match (ty.bytes(), a) {
            (8, Arg::U64(v)) => *v,
            (4, Arg::U32(v)) => *v as u64,
            (4, Arg::F32(v)) if *ty == Ty::F32 => v.to_bits() as u64,
            _ => return Err(format!("parameter `{name}` (.{ty:?}) given {a:?}")),
        };
        params.push(v);
    }
    let mut stats = Stats::default();
    for ctaid in 0..grid {
        let mut cta = Cta {
            entry: e,
            module,
            params: &params,
            ctaid,
            nctaid: grid,
            ntid: block,
            // Uninitialized shared memory reads as NaN (0xFF bytes).
            shared: vec![0xFF; module.shared_bytes],
            stamps: vec![Stamp::default(); module.shared_bytes.div_ceil(4)],
            warp_epoch: vec![0; block.div_ceil(32) as usize],
            cta_epoch: 0,
        };
        cta.run(dev, &mut stats)
            .map_err(|err| format!("`{entry}` CTA {ctaid}: {err}"))?;
    }
    Ok(stats)
}

impl Cta<'_> {
    fn run(&mut self, dev: &mut Device, stats: &mut Stats) -> Result<(), String> {
        let nregs = self.entry.regs.len();
        let mut threads: Vec<Thread> = (0..self.ntid)
            .map(|_| Thread {
                regs: vec![0; nregs],
                defined: vec![false; nregs],
                pc: 0,
                state: State::Ready,
            })
            .collect();
        loop {
            let mut progress = false;
            for (tid, th) in threads.iter_mut().enumerate() {
                if th.state == State::Ready {
                    progress = true;
                    self.run_thread(tid as u32, th, dev, stats)?;
                }
            }
            // Collectives: per warp, once every lane waits.
            let warps = threads.len().div_ceil(32);
            for w in 0..warps {
                let lanes = &mut threads[w * 32..((w + 1) * 32).min(self.ntid as usize)];
                if lanes.iter().any(|t| t.state == State::Ready) {
                    continue;
                }
                let waiting: Vec<usize> = (0..lanes.len())
                    .filter(|&l| lanes[l].state == State::Waiting)
                    .collect();
                let Some(&first) = waiting.first() else {
                    continue;
                };
                let inst = &self.entry.code[lanes[first].pc];
                if matches!(inst.kind, Kind::BarSync) {
                    continue;
                }
                progress = true;
                if lanes.len() < 32 || waiting.len() < 32 {
                    return Err(format!(
                        "warp {w}: `{}` with a full mask, but only {} of 32 lanes reach it (the others exited)",
                        inst.text,
                        waiting.len()
                    ));
                }
                for &l in &waiting {
                    let other = &self.entry.code[lanes[l].pc];
                    if std::mem::discriminant(&other.kind) != std::mem::discriminant(&inst.kind) {
                        return Err(format!(
                            "warp {w}: lanes wait at different collectives: `{}` and `{}`",
                            inst.text, other.text
                        ));
                    }
                }
                self.collective(w, lanes)?;
            }
            // CTA barrier.
            let live: Vec<usize> = (0..threads.len())
                .filter(|&t| threads[t].state != State::Done)
                .collect();
            if !live.is_empty()
                && live.iter().all(|&t| {
                    threads[t].state == State::Waiting
                        && matches!(self.entry.code[threads[t].pc].kind, Kind::BarSync)
                })
            {
                if live.len() != threads.len() {
                    return Err("bar.sync reached after some threads exited".into());
                }
                for t in &mut threads {
                    t.pc += 1;
                    t.state = State::Ready;
                }
                self.cta_epoch += 1;
                progress = true;
            }
            if live.is_empty() {
                return Ok(());
            }
            if !progress {
                return Err("deadlock: threads wait at collectives that can never complete".into());
            }
        }
    }

    fn collective(&mut self, w: usize, lanes: &mut [Thread]) -> Result<(), String> {
        let inst = self.entry.code[lanes[0].pc].clone();
        match inst.kind {
            Kind::Shfl {
                mode,
                a,
                b,
                c,
                mask,
                d,
            } => {
                let vals: Vec<u64> = (0..32)
                    .map(|l| self.read(&lanes[l], (w * 32 + l) as u32, a))
                    .collect::<Result<_, _>>()?;
                let mut out = [0u64; 32];
                for (l, o) in out.iter_mut().enumerate() {
                    let inst_l = &self.entry.code[lanes[l].pc];
                    let Kind::Shfl {
                        mode: m2,
                        b: b2,
                        c: c2,
                        mask: k2,
                        ..
                    } = inst_l.kind
                    else {
                        unreachable!()
                    };
                    if m2 != mode || b2 != b || c2 != c || k2 != mask {
                        return Err(format!(
                            "warp {w}: lanes at different shuffles `{}` and `{}`",
                            inst.text, inst_l.text
                        ));
                    }
                    let tid = (w * 32 + l) as u32;
                    let m = self.read(&lanes[l], tid, mask)? as u32;
                    if m != u32::MAX {
                        return Err(format!(
                            "`{}`: only full-warp masks are emulated",
                            inst.text
                        ));
                    }
                    let bv = self.read(&lanes[l], tid, b)? as u32 & 0x1f;
                    let cv = self.read(&lanes[l], tid, c)? as u32;
                    let lane = l as u32;
                    let clamp = cv & 0x1f;
                    let segmask = (cv >> 8) & 0x1f;
                    let max_lane = (lane & segmask) | (clamp & !segmask);
                    let min_lane = lane & segmask;
                    let (j, ok) = match mode {
                        ShflMode::Down => (lane + bv, lane + bv <= max_lane),
                        ShflMode::Up => (
                            lane.wrapping_sub(bv),
                            lane as i64 - bv as i64 >= max_lane as i64,
                        ),
                        ShflMode::Bfly => (lane ^ bv, (lane ^ bv) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (bv & !segmask);
                            (j, j <= max_lane)
                        }
                    };
                    let src = if ok { j as usize } else { l };
                    *o = vals[src] & 0xFFFF_FFFF;
                }
                for (l, t) in lanes.iter_mut().enumerate() {
                    t.regs[d as usize] = out[l];
                    t.defined[d as usize] = true;
                    t.pc += 1;
                    t.state = State::Ready;
                }
            }
            Kind::VoteAny { d, a, mask } => {
                let mut any = false;
                for (l, t) in lanes.iter().enumerate() {
                    let tid = (w * 32 + l) as u32;
                    if self.read(t, tid, mask)? as u32 != u32::MAX {
                        return Err(format!(
                            "`{}`: only full-warp masks are emulated",
                            inst.text
                        ));
                    }
                    any |= self.read(t, tid, a)? != 0;
                }
                for t in lanes.iter_mut() {
                    t.regs[d as usize] = u64::from(any);
                    t.defined[d as usize] = true;
                    t.pc += 1;
                    t.state = State::Ready;
                }
            }
            Kind::BarWarp { mask } => {
                for (l, t) in lanes.iter_mut().enumerate() {
                    let m = self.read(t, (w * 32 + l) as u32, mask)? as u32;
                    if m != u32::MAX {
                        return Err(format!(
                            "`{}`: only full-warp masks are emulated",
                            inst.text
                        ));
                    }
                    t.pc += 1;
                    t.state = State::Ready;
                }
                self.warp_epoch[w] += 1;
            }
            _ => return Err(format!("`{}` is not a warp collective", inst.text)),
        }
        Ok(())
    }

    fn read(&self, t: &Thread, tid: u32, o: Opnd) -> Result<u64, String> {
        Ok(match o {
            Opnd::Reg(r) => {
                if !t.defined[r as usize] {
                    return Err(format!(
                        "reads `{}` before anything wrote it",
                        self.entry.regs[r as usize].0
                    ));
                }
                t.regs[r as usize]
            }
            Opnd::Int(v) => v as u64,
            Opnd::FBits(b) => b,
            Opnd::Sym(a) => a,
            Opnd::Sreg(s) => match s {
                Sreg::Tid => tid as u64,
                Sreg::Ntid => self.ntid as u64,
                Sreg::Ctaid => self.ctaid as u64,
                Sreg::Nctaid => self.nctaid as u64,
                Sreg::Laneid => (tid % 32) as u64,
                Sreg::Zero => 0,
                Sreg::One => 1,
            },
        })
    }

    fn address(&self, t: &Thread, tid: u32, a: &Addr) -> Result<u64, String> {
        Ok(self.read(t, tid, a.base)?.wrapping_add(a.off as u64))
    }

    fn shared_at(&self, addr: u64, len: usize, align: u64) -> Result<usize, String> {
        if !addr.is_multiple_of(align) {
            return Err(format!("misaligned shared access at {addr:#x}"));
        }
        let end = SHARED_BASE + self.shared.len() as u64;
        if addr < SHARED_BASE || addr + len as u64 > end {
            return Err(format!(
                "shared access of {len} bytes at {addr:#x} is outside the module's .shared variables"
            ));
        }
        Ok((addr - SHARED_BASE) as usize)
    }

    /// Runs one thread until it exits or blocks at a collective.
    fn run_thread(
        &mut self,
        tid: u32,
        t: &mut Thread,
        dev: &mut Device,
        stats: &mut Stats,
    ) -> Result<(), String> {
        let code = &self.entry.code;
        loop {
            let inst: &Inst = code
                .get(t.pc)
                .ok_or("ran past the end of the entry without `ret`")?;
            stats.instructions += 1;
            if stats.instructions > STEP_LIMIT {
                return Err("step limit reached (an endless loop?)".into());
            }
            if let Some((p, want)) = inst.guard {
                let v = self
                    .read(t, tid, Opnd::Reg(p))
                    .map_err(|e| format!("thread {tid}: `{}`: {e}", inst.text))?;
                if (v != 0) != want {
                    t.pc += 1;
                    continue;
                }
            }
            let flow = self.exec(tid, t, inst, dev);
            if flow.is_ok() {
                mark_dests(&inst.kind, &mut t.defined);
            }
            match flow {
                Ok(Flow::Next) => t.pc += 1,
                Ok(Flow::Jump(to)) => t.pc = to,
                Ok(Flow::Block) => {
                    t.state = State::Waiting;
                    return Ok(());
                }
                Ok(Flow::Exit) => {
                    t.state = State::Done;
                    return Ok(());
                }
                Err(e) => return Err(format!("thread {tid}: `{}`: {e}", inst.text)),
            }
        }
    }

    fn exec(
        &mut self,
        tid: u32,
        t: &mut Thread,
        inst: &Inst,
        dev: &mut Device,
    ) -> Result<Flow, String> {
        let rd = |o: Opnd, t: &Thread| self.read(t, tid, o);
        match inst.kind {
            Kind::F1 { op, ftz, d, a } => {
                let x = f32::from_bits(rd(a, t)? as u32);
                t.regs[d as usize] = float::unary(op, ftz, x).to_bits() as u64;
            }
            Kind::F2 {
                op,
                ftz,
                nan,
                d,
                a,
                b,
            } => {
                let x = f32::from_bits(rd(a, t)? as u32);
                let y = f32::from_bits(rd(b, t)? as u32);
                t.regs[d as usize] = float::binary(op, ftz, nan, x, y).to_bits() as u64;
            }
            Kind::Fma { ftz, d, a, b, c } => {
                let x = float::flush(ftz, f32::from_bits(rd(a, t)? as u32));
                let y = float::flush(ftz, f32::from_bits(rd(b, t)? as u32));
                let z = float::flush(ftz, f32::from_bits(rd(c, t)? as u32));
                t.regs[d as usize] = float::flush(ftz, x.mul_add(y, z)).to_bits() as u64;
            }
            Kind::I2 { op, ty, d, a, b } => {
                let x = rd(a, t)?;
                let y = rd(b, t)?;
                t.regs[d as usize] = int_binary(op, ty, x, y)?;
            }
            Kind::Mad {
                wide,
                ty,
                d,
                a,
                b,
                c,
            } => {
                let x = rd(a, t)?;
                let y = rd(b, t)?;
                let z = rd(c, t)?;
                t.regs[d as usize] = if wide {
                    let p = if ty.signed() {
                        ((x as u32 as i32 as i64) * (y as u32 as i32 as i64)) as u64
                    } else {
                        (x as u32 as u64) * (y as u32 as u64)
                    };
                    p.wrapping_add(z)
                } else {
                    trunc(ty, x.wrapping_mul(y).wrapping_add(z))
                };
            }
            Kind::Not { ty, d, a } => {
                let x = rd(a, t)?;
                t.regs[d as usize] = if ty == Ty::Pred {
                    u64::from(x == 0)
                } else {
                    trunc(ty, !x)
                };
            }
            Kind::Setp {
                cmp,
                ty,
                ftz,
                d,
                a,
                b,
            } => {
                let x = rd(a, t)?;
                let y = rd(b, t)?;
                t.regs[d as usize] = u64::from(compare(cmp, ty, ftz, x, y)?);
            }
            Kind::Selp { ty, d, a, b, p } => {
                let c = rd(p, t)? != 0;
                t.regs[d as usize] = trunc(ty, if c { rd(a, t)? } else { rd(b, t)? });
            }
            Kind::Mov { ty, d, a } => {
                t.regs[d as usize] = trunc(ty, rd(a, t)?);
            }
            Kind::Cvt {
                dst,
                src,
                rnd,
                ftz,
                sat,
                d,
                a,
            } => {
                t.regs[d as usize] = float::convert(dst, src, rnd, ftz, sat, rd(a, t)?)?;
            }
            Kind::Cvta { d, a } => {
                // Generic and global addresses are the same in this model.
                t.regs[d as usize] = rd(a, t)?;
            }
            Kind::Ld {
                space,
                ty,
                ref d,
                addr,
            } => {
                let n = ty.bytes();
                if let Some(i) = addr.param {
                    t.regs[d[0] as usize] = self.params[i];
                    return Ok(Flow::Next);
                }
                let base = self.address(t, tid, &addr)?;
                let total = n * d.len();
                let mut buf = [0u8; 32];
                match space {
                    Space::Global => {
                        buf[..total].copy_from_slice(dev.slice(base, total, total as u64)?)
                    }
                    Space::Shared => {
                        let at = self.shared_at(base, total, total as u64)?;
                        self.check_shared_read(tid, at, total)?;
                        buf[..total].copy_from_slice(&self.shared[at..at + total]);
                    }
                    Space::Const => {
                        let off = base
                            .checked_sub(CONST_BASE)
                            .ok_or("const address below the window")?
                            as usize;
                        let src =
                            self.module
                                .const_bytes
                                .get(off..off + total)
                                .ok_or_else(|| {
                                    format!(
                                    "const access at {base:#x} is outside every .const variable"
                                )
                                })?;
                        buf[..total].copy_from_slice(src);
                    }
                    Space::Param => unreachable!(),
                }
                for (k, r) in d.iter().enumerate() {
                    let mut w = [0u8; 8];
                    w[..n].copy_from_slice(&buf[k * n..(k + 1) * n]);
                    let v = u64::from_le_bytes(w);
                    t.regs[*r as usize] = if ty.signed() { sext(v, n) } else { v };
                }
            }
            Kind::St {
                space,
                ty,
                ref v,
                addr,
            } => {
                let n = ty.bytes();
                let base = self.address(t, tid, &addr)?;
                let total = n * v.len();
                let mut buf = [0u8; 32];
                for (k, o) in v.iter().enumerate() {
                    buf[k * n..(k + 1) * n].copy_from_slice(&rd(*o, t)?.to_le_bytes()[..n]);
                }
                match space {
                    Space::Global => dev
                        .slice(base, total, total as u64)?
                        .copy_from_slice(&buf[..total]),
                    Space::Shared => {
                        let at = self.shared_at(base, total, total as u64)?;
                        self.stamp_shared_write(tid, at, total)?;
                        self.shared[at..at + total].copy_from_slice(&buf[..total]);
                    }
                    _ => return Err("store to a read-only state space".into()),
                }
            }
            Kind::Shfl { .. } | Kind::VoteAny { .. } | Kind::BarWarp { .. } | Kind::BarSync => {
                return Ok(Flow::Block)
            }
            Kind::Bra { target } => return Ok(Flow::Jump(target)),
            Kind::Ret => return Ok(Flow::Exit),
        }
        Ok(Flow::Next)
    }

    /// A read of a word another thread wrote since the last barrier they share is a race.
    fn check_shared_read(&self, tid: u32, at: usize, len: usize) -> Result<(), String> {
        for w in at / 4..(at + len).div_ceil(4) {
            let s = self.stamps[w];
            if s.writer == 0 || s.writer == tid + 1 {
                continue;
            }
            let writer = s.writer - 1;
            let same_warp = writer / 32 == tid / 32;
            let ordered = if same_warp {
                s.warp_epoch != self.warp_epoch[(tid / 32) as usize]
                    || s.cta_epoch != self.cta_epoch
            } else {
                s.cta_epoch != self.cta_epoch
            };
            if !ordered {
                return Err(format!(
                    "shared-memory race: thread {tid} reads offset {} written by thread {writer} with no barrier between",
                    w * 4
                ));
            }
        }
        Ok(())
    }

    fn stamp_shared_write(&mut self, tid: u32, at: usize, len: usize) -> Result<(), String> {
        for w in at / 4..(at + len).div_ceil(4) {
            let s = self.stamps[w];
            if s.writer != 0
                && s.writer != tid + 1
                && s.cta_epoch == self.cta_epoch
                && (((s.writer - 1) / 32 != tid / 32)
                    || s.warp_epoch == self.warp_epoch[(tid / 32) as usize])
            {
                return Err(format!(
                    "shared-memory race: threads {} and {tid} write offset {} with no barrier between",
                    s.writer - 1,
                    w * 4
                ));
            }
            self.stamps[w] = Stamp {
                writer: tid + 1,
                warp_epoch: self.warp_epoch[(tid / 32) as usize],
                cta_epoch: self.cta_epoch,
            };
        }
        Ok(())
    }
}

/// Marks the registers an instruction writes as defined (a shuffle's is written when the warp
/// executes it).
fn mark_dests(k: &Kind, defined: &mut [bool]) {
    match *k {
        Kind::F1 { d, .. }
        | Kind::F2 { d, .. }
        | Kind::Fma { d, .. }
        | Kind::I2 { d, .. }
        | Kind::Mad { d, .. }
        | Kind::Not { d, .. }
        | Kind::Setp { d, .. }
        | Kind::Selp { d, .. }
        | Kind::Mov { d, .. }
        | Kind::Cvt { d, .. }
        | Kind::Cvta { d, .. } => defined[d as usize] = true,
        Kind::Ld { ref d, .. } => {
            for r in d {
                defined[*r as usize] = true;
            }
        }
        _ => {}
    }
}

enum Flow {
    Next,
    Jump(usize),
    Block,
    Exit,
}

fn sext(v: u64, bytes: usize) -> u64 {
    let shift = 64 - 8 * bytes as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// `v` cut to the width of `ty` (predicates to 0/1).
fn trunc(ty: Ty, v: u64) -> u64 {
    match ty.bytes() {
        0 => u64::from(v != 0),
        8 => v,
        n => v & ((1u64 << (8 * n)) - 1),
    }
}

fn int_binary(op: I2, ty: Ty, x: u64, y: u64) -> Result<u64, String> {
    let bits = 8 * ty.bytes() as u32;
    let s = ty.signed();
    let (xs, ys) = (
        sext(x, ty.bytes().max(1)) as i64,
        sext(y, ty.bytes().max(1)) as i64,
    );
    let (xu, yu) = (trunc(ty, x), trunc(ty, y));
    Ok(match op {
        I2::Add => trunc(ty, x.wrapping_add(y)),
        I2::Sub => trunc(ty, x.wrapping_sub(y)),
        I2::MulLo => trunc(ty, x.wrapping_mul(y)),
        I2::MulHi => {
            if s {
                trunc(ty, ((xs as i128 * ys as i128) >> bits) as u64)
            } else {
                trunc(ty, ((xu as u128 * yu as u128) >> bits) as u64)
            }
        }
        I2::MulWide => {
            if s {
                ((xs as i32 as i64) * (ys as i32 as i64)) as u64
            } else {
                xu.wrapping_mul(yu)
            }
        }
        I2::And => {
            if ty == Ty::Pred {
                u64::from(x != 0 && y != 0)
            } else {
                x & y
            }
        }
        I2::Or => {
            if ty == Ty::Pred {
                u64::from(x != 0 || y != 0)
            } else {
                x | y
            }
        }
        I2::Xor => {
            if ty == Ty::Pred {
                u64::from((x != 0) != (y != 0))
            } else {
                trunc(ty, x ^ y)
            }
        }
        I2::Shl => {
            let n = y as u32;
            if n >= bits {
                0
            } else {
                trunc(ty, xu << n)
            }
        }
        I2::Shr => {
            let n = (y as u32).min(bits);
            if s {
                trunc(ty, (xs >> n.min(63)) as u64)
            } else if n >= bits {
                0
            } else {
                xu >> n
            }
        }
        I2::Min => {
            if s {
                trunc(ty, xs.min(ys) as u64)
            } else {
                xu.min(yu)
            }
        }
        I2::Max => {
            if s {
                trunc(ty, xs.max(ys) as u64)
            } else {
                xu.max(yu)
            }
        }
        I2::Div | I2::Rem => {
            if yu == 0 {
                return Err("integer division by zero (undefined on the GPU)".into());
            }
            match (op, s) {
                (I2::Div, false) => xu / yu,
                (I2::Rem, false) => xu % yu,
                (I2::Div, true) => trunc(ty, xs.wrapping_div(ys) as u64),
                _ => trunc(ty, xs.wrapping_rem(ys) as u64),
            }
        }
    })
}

fn compare(cmp: Cmp, ty: Ty, ftz: bool, x: u64, y: u64) -> Result<bool, String> {
    if ty == Ty::F32 {
        let a = float::flush(ftz, f32::from_bits(x as u32));
        let b = float::flush(ftz, f32::from_bits(y as u32));
        return Ok(float::compare(cmp, a as f64, b as f64));
    }
    if ty == Ty::F64 {
        return Ok(float::compare(cmp, f64::from_bits(x), f64::from_bits(y)));
    }
    if ty.is_float() {
        return Err(format!("setp on .{ty:?} is not emulated"));
    }
    let o = if ty.signed() {
        let n = ty.bytes();
        (sext(x, n) as i64).cmp(&(sext(y, n) as i64))
    } else {
        trunc(ty, x).cmp(&trunc(ty, y))
    };
    use std::cmp::Ordering::*;
    Ok(match cmp {
        Cmp::Eq => o == Equal,
        Cmp::Ne => o != Equal,
        Cmp::Lt => o == Less,
        Cmp::Le => o != Greater,
        Cmp::Gt => o == Greater,
        Cmp::Ge => o != Less,
        _ => return Err("unordered comparison of integers".into()),
    })
}
