//! systemd services over D-Bus (runbook: `systemctl restart agent-worker-marie`), through zbus
//! and the generated proxies of `zbus_systemd`, never by running `systemctl`.
//!
//! [`Systemd::unit`] reads a service's state in two calls (`GetAll` of its `Unit` and
//! `Service` interfaces) and [`unit::UnitInfo`] makes sense of it; start, stop and restart
//! queue a job (mode `replace`) and wait until the unit has settled (a stop within a grace
//! period, then `KillUnit` with SIGKILL); [`Systemd::set_memory_max`]
//! changes the limit of the running unit (`SetUnitProperties`, runtime only).

pub mod journal;
pub mod oom;
pub mod runtime;
pub mod unit;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use zbus::{
    fdo::PropertiesProxy,
    names::InterfaceName,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
    Connection,
};
use zbus_systemd::systemd1::ManagerProxy;

use unit::{Prop, Props, UnitInfo};

const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
/// How often a unit is looked at while a job changes it.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// How long a unit may take to go once SIGKILL was sent to all its processes.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Errors talking to systemd.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd unreachable over D-Bus: {0}")]
    Unavailable(String),
    #[error("systemd refused {operation} of {unit}: {message}")]
    Refused {
        operation: &'static str,
        unit: String,
        message: String,
    },
    #[error("unit {unit} did not settle within {}s (still {state})", .waited.as_secs())]
    NotSettled {
        unit: String,
        state: String,
        waited: Duration,
    },
}

/// The system manager of one host, over one D-Bus connection, made again when the bus dropped
/// it (dbus-daemon restarted): the call that finds it broken fails as unavailable (the
/// controllers retry), the next one connects anew.
#[derive(Clone)]
pub struct Systemd {
    /// `None`: the system bus.
    address: Option<String>,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl Systemd {
    /// Connect to the system bus, or to the bus at `address` (`unix:path=...`: a systemd in a
    /// container, whose bus socket is mounted on the host).
    pub async fn connect(address: Option<&str>) -> Result<Self, SystemdError> {
        let systemd = Self {
            address: address.map(String::from),
            conn: Arc::default(),
        };
        // Made now, so that a wrong address fails at start-up; the clone is kept inside.
        let _ = systemd.connection().await?;
        Ok(systemd)
    }

    /// The connection, made first when there is none.
    async fn connection(&self) -> Result<Connection, SystemdError> {
        if let Some(conn) = self.conn.lock().unwrap().clone() {
            return Ok(conn);
        }
        let unavailable = |e: zbus::Error| SystemdError::Unavailable(e.to_string());
        let conn = match &self.address {
            Some(address) => {
                zbus::connection::Builder::address(address.as_str())
                    .map_err(unavailable)?
                    .build()
                    .await
            }
            None => Connection::system().await,
        }
        .map_err(unavailable)?;
        *self.conn.lock().unwrap() = Some(conn.clone());
        Ok(conn)
    }

    /// A failed call: a method error is systemd's answer; anything else means the connection is
    /// gone, so it is made anew next time.
    fn failed(&self, operation: &'static str, unit: &str, e: zbus::Error) -> SystemdError {
        match e {
            zbus::Error::MethodError(name, message, _) => SystemdError::Refused {
                operation,
                unit: unit.into(),
                message: format!("{name}: {}", message.unwrap_or_default()),
            },
            other => self.lost(other),
        }
    }

    /// The connection broke: forget it.
    fn lost(&self, e: zbus::Error) -> SystemdError {
        self.conn.lock().unwrap().take();
        SystemdError::Unavailable(e.to_string())
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SystemdError> {
        ManagerProxy::new(&self.connection().await?)
            .await
            .map_err(|e| self.lost(e))
    }

    /// The service `name` as systemd has it now; one that systemd does not know reads with
    /// `load_state` `not-found`.
    pub async fn unit(&self, name: &str) -> Result<UnitInfo, SystemdError> {
        let refused = |e: zbus::Error| self.failed("inspect", name, e);
        let path = self
            .manager()
            .await?
            .load_unit(name.to_string())
            .await
            .map_err(refused)?;
        let unit = self.props(&path, UNIT_INTERFACE).await.map_err(refused)?;
        let service = if unit.get("LoadState") == Some(&Prop::Text("not-found".into())) {
            Props::new()
        } else {
            self.props(&path, SERVICE_INTERFACE)
                .await
                .map_err(refused)?
        };
        Ok(UnitInfo::from_props(name, &unit, &service))
    }

    /// The unit at the object `path`, named by its `Id`.
    async fn unit_at(&self, path: &OwnedObjectPath) -> zbus::Result<UnitInfo> {
        let unit = self.props(path, UNIT_INTERFACE).await?;
        let service = self
            .props(path, SERVICE_INTERFACE)
            .await
            .unwrap_or_default();
        let name = match unit.get("Id") {
            Some(Prop::Text(id)) => id.clone(),
            _ => String::new(),
        };
        Ok(UnitInfo::from_props(&name, &unit, &service))
    }

    /// Every service whose `ActiveState` changes from now on, read again as it is then: systemd's
    /// `PropertiesChanged` signals of its units (after `Subscribe`, without which it sends
    /// none). The stream ends when the bus connection does.
    pub async fn unit_changes(
        &self,
    ) -> Result<
        impl futures::Stream<Item = Result<UnitInfo, SystemdError>> + Send + 'static,
        SystemdError,
    > {
        let unavailable = |e: zbus::Error| SystemdError::Unavailable(e.to_string());
        let lost = |e: zbus::Error| self.lost(e);
        self.manager().await?.subscribe().await.map_err(lost)?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.systemd1")
            .and_then(|b| b.interface("org.freedesktop.DBus.Properties"))
            .and_then(|b| b.member("PropertiesChanged"))
            .and_then(|b| b.path_namespace("/org/freedesktop/systemd1/unit"))
            .map_err(unavailable)?
            .build();
        let conn = self.connection().await?;
        let messages = zbus::MessageStream::for_match_rule(rule, &conn, Some(1024))
            .await
            .map_err(lost)?;
        let me = self.clone();
        Ok(futures::StreamExt::filter_map(messages, move |msg| {
            let me = me.clone();
            async move {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) => return Some(Err(me.lost(e))),
                };
                let path = OwnedObjectPath::from(msg.header().path()?.to_owned());
                let (interface, changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
                    msg.body().deserialize().ok()?;
                if interface != UNIT_INTERFACE || !changed.contains_key("ActiveState") {
                    return None;
                }
                // A unit gone meanwhile has nothing left to report.
                me.unit_at(&path)
                    .await
                    .ok()
                    .filter(|u| u.name.ends_with(".service"))
                    .map(Ok)
            }
        }))
    }

    async fn props(&self, path: &OwnedObjectPath, interface: &str) -> zbus::Result<Props> {
        let conn = self
            .connection()
            .await
            .map_err(|e| zbus::Error::Failure(e.to_string()))?;
        let proxy = PropertiesProxy::builder(&conn)
            .destination("org.freedesktop.systemd1")?
            .path(path.clone())?
            .build()
            .await?;
        let all: HashMap<String, OwnedValue> =
            proxy.get_all(InterfaceName::try_from(interface)?).await?;
        Ok(all.into_iter().map(|(k, v)| (k, prop(&v))).collect())
    }

    /// Start the unit (`StartUnit`, mode `replace`) and wait until it has settled.
    pub async fn start(&self, name: &str, wait: Duration) -> Result<UnitInfo, SystemdError> {
        let m = self.manager().await?;
        // A failed unit keeps its result, and one that failed often in a row hits systemd's
        // start limit, until reset: the operator's own policy decides.
        let _ = m.reset_failed_unit(name.into()).await;
        m.start_unit(name.into(), "replace".into())
            .await
            .map_err(|e| self.failed("start", name, e))?;
        self.settled(name, wait).await
    }

    /// Stop the unit as `docker stop --time` does: its stop signal, then SIGKILL to every
    /// process left once `grace` has passed (or the unit's own `TimeoutStopSec=`, if shorter),
    /// and wait until it has settled.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<UnitInfo, SystemdError> {
        let m = self.manager().await?;
        m.stop_unit(name.into(), "replace".into())
            .await
            .map_err(|e| self.failed("stop", name, e))?;
        match self.settled(name, grace).await {
            Err(SystemdError::NotSettled { .. }) => {}
            done => return done,
        }
        // The stop job stays queued: systemd sees the processes go and finishes it.
        m.kill_unit(name.into(), "all".into(), libc::SIGKILL)
            .await
            .map_err(|e| self.failed("kill", name, e))?;
        self.settled(name, KILL_WAIT).await
    }

    /// Stop the unit (with `grace`, as [`Self::stop`]) and start it again; a stopped one is
    /// just started.
    pub async fn restart(
        &self,
        name: &str,
        grace: Duration,
        wait: Duration,
    ) -> Result<UnitInfo, SystemdError> {
        self.stop(name, grace).await?;
        self.start(name, wait).await
    }

    /// Set `MemoryMax=` of the unit for as long as it runs (`SetUnitProperties`, runtime):
    /// the cgroup's limit changes at once, the unit file stays as it is.
    pub async fn set_memory_max(&self, name: &str, bytes: u64) -> Result<(), SystemdError> {
        let value = OwnedValue::try_from(Value::U64(bytes))
            .map_err(|e| SystemdError::Unavailable(e.to_string()))?;
        self.manager()
            .await?
            .set_unit_properties(name.into(), true, vec![("MemoryMax".into(), value)])
            .await
            .map_err(|e| self.failed("set MemoryMax", name, e))
    }

    /// Make systemd read its unit files again (`Reload`, `systemctl daemon-reload`).
    pub async fn reload(&self) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .reload()
            .await
            .map_err(|e| self.failed("reload", "the manager", e))
    }

    /// The unit once no job changes it any more (none queued, none running), within `wait`.
    async fn settled(&self, name: &str, wait: Duration) -> Result<UnitInfo, SystemdError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let unit = self.unit(name).await?;
            // A job just queued may not have begun: the unit still reads as before it.
            if !unit.active_state.in_transition() && unit.job.is_none() {
                return Ok(unit);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SystemdError::NotSettled {
                    unit: name.into(),
                    state: format!("{:?}", unit.active_state),
                    waited: wait,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}

/// A property value as [`unit`] reads them.
fn prop(v: &Value<'_>) -> Prop {
    match v {
        Value::U8(n) => Prop::Unsigned(u64::from(*n)),
        Value::U16(n) => Prop::Unsigned(u64::from(*n)),
        Value::U32(n) => Prop::Unsigned(u64::from(*n)),
        Value::U64(n) => Prop::Unsigned(*n),
        Value::I16(n) => Prop::Signed(i64::from(*n)),
        Value::I32(n) => Prop::Signed(i64::from(*n)),
        Value::I64(n) => Prop::Signed(*n),
        Value::Str(s) => Prop::Text(s.to_string()),
        Value::Array(items) => Prop::Texts(
            items
                .iter()
                .filter_map(|i| match i {
                    Value::Str(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
        ),
        Value::Value(inner) => prop(inner),
        // `Job` is `(id, path)`: its id.
        Value::Structure(s) => s.fields().first().map_or(Prop::Other, prop),
        _ => Prop::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbus_values_become_props() {
        assert_eq!(prop(&Value::U32(7)), Prop::Unsigned(7));
        assert_eq!(prop(&Value::I32(-9)), Prop::Signed(-9));
        assert_eq!(prop(&Value::from("failed")), Prop::Text("failed".into()));
        let env = Value::from(vec!["A=1", "WORKERRECOVERY_WORKER=ns/w"]);
        assert_eq!(
            prop(&env),
            Prop::Texts(vec!["A=1".into(), "WORKERRECOVERY_WORKER=ns/w".into()])
        );
        assert_eq!(prop(&Value::Bool(true)), Prop::Other);
        assert_eq!(
            prop(&Value::Value(Box::new(Value::U64(3)))),
            Prop::Unsigned(3)
        );
        // `Job`: (id, object path).
        let job = zbus::zvariant::StructureBuilder::new()
            .add_field(42u32)
            .add_field(
                zbus::zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/42").unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(prop(&Value::Structure(job)), Prop::Unsigned(42));
    }
}
