//! Process events: exec, fork and exit, over a ring buffer. They are rare (a busy mail server
//! forks a few hundred times a second, sends millions of times), so an event each is cheap,
//! and they let the agent name a process that exited before its first poll.
//!
//! `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`,
//! `sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
//! `sched_process_exit(struct task_struct *p, bool group_dead)`
//! (include/trace/events/sched.h; the agent checks each prototype in BTF).

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{
    EVENT_EXEC, EVENT_EXIT, EVENT_FORK, MAP_PROCESS_EVENTS, PROG_PROCESS, ProcessEvent,
};

use crate::{
    flow::{ReadError, read_kernel},
    maps::{KERNEL_DROPS, KERNEL_ERRORS, LAYOUT, PROCESS_EVENTS, bump},
};

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let bprm = ctx.arg::<u64>(2) as *const u8;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(EVENT_EXEC, tgid, 0, Some(bprm));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let child = ctx.arg::<u64>(1) as *const u8;
    let layout = LAYOUT.load();
    let ids = read_kernel::<i32>(child, layout.task_pid)
        .and_then(|pid| Ok((pid, read_kernel::<i32>(child, layout.task_tgid)?)));
    match ids {
        // A new thread of an existing process is not a new process.
        Ok((pid, tgid)) if pid == tgid => {
            let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
            emit(EVENT_FORK, tgid as u32, parent, None);
        }
        Ok(_) => {}
        Err(ReadError) => bump(&KERNEL_ERRORS, PROG_PROCESS),
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    // `group_dead`: the last thread of the process is leaving.
    if ctx.arg::<u64>(1) & 0xff != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        emit(EVENT_EXIT, tgid, 0, None);
    }
    0
}

/// Writes one event in place in the ring buffer; a full buffer is counted as a drop.
#[inline(always)]
fn emit(kind: u8, tgid: u32, ppid: u32, bprm: Option<*const u8>) {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        bump(&KERNEL_DROPS, MAP_PROCESS_EVENTS);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, exclusively ours, ProcessEvent-sized slot; every
    // field is written before submit.
    unsafe {
        (*event).kind = kind;
        (*event)._pad = [0; 3];
        (*event).tgid = tgid;
        (*event).ppid = ppid;
        (*event)._pad2 = 0;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).filename[0] = 0;
    }
    if let Some(bprm) = bprm {
        let layout = LAYOUT.load();
        // SAFETY: as above; the helper bounds the copy to the array and NUL-terminates it.
        let copied = read_kernel::<u64>(bprm, layout.bprm_filename).and_then(|name| unsafe {
            bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*event).filename)
                .map(|_| ())
                .map_err(|_| ReadError)
        });
        if copied.is_err() {
            bump(&KERNEL_ERRORS, PROG_PROCESS);
        }
    }
    entry.submit(0);
}
