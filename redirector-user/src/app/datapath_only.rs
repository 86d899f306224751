//! `redirector run --datapath-only`: the kernel side alone, redirecting
//! the config's VIPs to `--listen-port`, where some other proxy listens
//! (any listener there draws them).

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use super::{RunOptions, load_datapath, ready, serve_admin};
use crate::{
    admin::{self, Admin, Dump},
    config::Config,
    datapath::service_entries,
    state::{Node, Services},
};

/// `--datapath-only`: the kernel side alone, redirecting the config's VIPs
/// to `--listen-port`, where some other proxy listens.
pub(super) async fn run(
    opts: &RunOptions,
    config: &Config,
    node: Node,
    admin: &Arc<Admin>,
) -> anyhow::Result<()> {
    let (datapath, _) = load_datapath(opts, &node).await?;
    let result = async {
        let _admin_task = match node.admin {
            Some(addr) => Some(serve_admin(admin::bind(addr.into()).await?, admin)),
            None => None,
        };
        let _logs = datapath
            .take_kernel_logs()
            .map(|logs| AbortOnDropHandle::new(tokio::spawn(logs.run())));
        datapath.set_services(&service_entries(&config.services))?;
        datapath.attach()?;
        admin.set_config_dump(Arc::new(Dump::new(config, &node, Services::default())));
        // Before the daemon says it is ready: a signal right after is heard.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        ready(admin)?;
        info!(pid = std::process::id(), "redirector ready (datapath only)");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    }
    .await;
    datapath.release();
    result
}
