//! The real warehouse application on a thread of the test process, for
//! end-to-end tests that need commands decided: [`RunningWarehouse::start`]
//! loads an inventory CSV, logs in as `wh` and decides live until stopped
//! (also on drop).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tally_client::replica::ReplicaLimits;
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};

use crate::{demo_client, ApplianceSpec};

/// The warehouse of `spec`'s appliance as tests run it: logged in as `wh`,
/// reading the stream as `read1`, starting a session from `inventory`, no
/// snapshot, holds expired every 5 ms, 60 s to catch up.
pub fn app_config(
    spec: &ApplianceSpec,
    limits: ReplicaLimits,
    inventory: &Path,
) -> WarehouseAppConfig {
    WarehouseAppConfig {
        consumer: spec.consumer_config(),
        client: spec.client_config("wh"),
        own_origin: demo_client("wh").client_id,
        limits,
        inventory: Some(inventory.to_path_buf()),
        snapshot: None,
        snapshot_interval: Duration::ZERO,
        expiry_check_interval: Duration::from_millis(5),
        catch_up_timeout: Duration::from_secs(60),
    }
}

/// The warehouse deciding on its own thread.
pub struct RunningWarehouse {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningWarehouse {
    /// Starts the authority of `spec`'s appliance with the inventory file
    /// `inventory` (`location,sku_symbol,quantity` lines) and `limits`.
    pub fn start(
        spec: &ApplianceSpec,
        inventory: &Path,
        limits: ReplicaLimits,
    ) -> RunningWarehouse {
        let config = app_config(spec, limits, inventory);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("test-warehouse".into())
            .spawn(move || {
                let mut app = WarehouseApp::start(config)?;
                app.run(&thread_stop)
            })
            .expect("spawn the warehouse");
        RunningWarehouse {
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the warehouse thread has ended (an error, since only
    /// [`stop`](Self::stop) ends it).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops deciding and returns how the warehouse ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the warehouse thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningWarehouse {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
