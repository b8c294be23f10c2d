//! An agent serving from a background thread of this process: for tests,
//! benchmarks and the host's built-in local device. Same code path as
//! `edgeloop-agent serve`, on a real loopback socket.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::runtime::Runtimes;
use crate::server::{Agent, AgentConfig, AgentError};

pub struct LocalAgent {
    addr: SocketAddr,
    device_id: String,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl LocalAgent {
    /// Starts an agent on `127.0.0.1` at an OS-chosen port.
    pub fn start(config: AgentConfig, runtimes: Runtimes) -> Result<Self, AgentError> {
        Self::start_at(config, runtimes, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts an agent listening on `addr` (e.g. where a killed one listened).
    pub fn start_at(config: AgentConfig, runtimes: Runtimes, addr: SocketAddr) -> Result<Self, AgentError> {
        let agent = Agent::new(config, runtimes)?;
        let device_id = agent.device_id().to_string();
        let listener = std::net::TcpListener::bind(addr).map_err(AgentError::Listen)?;
        listener.set_nonblocking(true).map_err(AgentError::Listen)?;
        let addr = listener.local_addr().map_err(AgentError::Listen)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("edgeloop-local-agent".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
                let served = rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let serve = agent.serve(listener, async {
                        let _ = stopped.await;
                    });
                    tokio::select! {
                        served = serve => served,
                        Ok(()) = killed => Ok(()),
                    }
                });
                // Killed: the connections' tasks go with the runtime, mid-request.
                rt.shutdown_background();
                served
            })
            .map_err(AgentError::Listen)?;
        Ok(LocalAgent { addr, device_id, stop: Some(stop), kill: Some(kill), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for clients, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Stops serving and waits for in-flight requests to finish.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    /// Stops at once, as a crashed agent would: the port closes and
    /// requests in flight lose their connection unanswered.
    pub fn kill(mut self) -> std::io::Result<()> {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("local agent thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
