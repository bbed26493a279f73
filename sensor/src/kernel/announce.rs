//! Telling the programs which process is the agent, so that it never counts itself.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use sensor_common::{AgentState, FileId};

use super::{KernelError, map_err};

/// Writes this agent into `AGENT`: its tgid at once, so that the programs stop counting it,
/// then, once `PATH_SENT` is empty, a generation one past the previous agent's, so that each
/// file read before this agent started has its path sent on its next read.
pub(super) fn announce_agent(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let tgid = std::process::id();
    let previous = {
        let mut agent = agent_map(ebpf)?;
        let previous = agent.get(&0, 0).map_err(map_err("AGENT"))?;
        agent
            .set(0, AgentState { tgid, ..previous }, 0)
            .map_err(map_err("AGENT"))?;
        previous
    };
    forget_sent_paths(ebpf)?;
    let state = AgentState {
        tgid,
        generation: previous.generation.wrapping_add(1),
    };
    agent_map(ebpf)?.set(0, state, 0).map_err(map_err("AGENT"))
}

fn agent_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, AgentState>, KernelError> {
    Array::try_from(
        ebpf.map_mut("AGENT")
            .ok_or(KernelError::MissingMap("AGENT"))?,
    )
    .map_err(map_err("AGENT"))
}

/// Empties `PATH_SENT`: this agent knows no path yet.
fn forget_sent_paths(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let mut sent: HashMap<&mut MapData, FileId, u8> = HashMap::try_from(
        ebpf.map_mut("PATH_SENT")
            .ok_or(KernelError::MissingMap("PATH_SENT"))?,
    )
    .map_err(map_err("PATH_SENT"))?;
    let ids: Vec<FileId> = sent.keys().filter_map(Result::ok).collect();
    for id in ids {
        // Gone already (evicted meanwhile) is as good as removed.
        let _ = sent.remove(&id);
    }
    Ok(())
}
