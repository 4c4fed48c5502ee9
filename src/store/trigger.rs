//! Webhook deliveries, cron schedules and poll states: what the triggers keep.

use super::tables::{DELIVERIES, DELIVERY_IDS, POLL_STATES, PROJECT_DELIVERIES, SCHEDULES};
use super::{Store, codec};
use crate::core::error::{Error, Result};
use crate::identity::audit::Record;
use crate::projects::inbox::Delivery;
use crate::projects::poll::PollState;
use crate::projects::schedule::Schedule;
use redb::{ReadableDatabase, ReadableTable};

impl Store {
    /// Records a delivery as received. A delivery id already recorded for the project
    /// (and not a re-delivery) is not recorded again: `Err(id of the first)`.
    pub async fn create_delivery(
        &self,
        mut delivery: Delivery,
    ) -> Result<std::result::Result<Delivery, u64>> {
        self.write(move |tx| {
            let key = (delivery.project.as_str(), delivery.delivery_id.as_str());
            let first = match delivery.redelivery_of {
                Some(_) => None,
                None => tx.open_table(DELIVERY_IDS)?.get(key)?.map(|v| v.value()),
            };
            if let Some(first) = first {
                // A delivery id that failed may come again (the forge's "Redeliver" keeps
                // it): that one is acted on, and the id then names it.
                let failed = match tx.open_table(DELIVERIES)?.get(first)? {
                    Some(v) => {
                        codec::decode::<Delivery>(DELIVERIES, v.value())?.outcome
                            == crate::projects::inbox::Outcome::Failed
                    }
                    None => true,
                };
                if !failed {
                    return Ok(Err(first));
                }
            }
            delivery.id = tx
                .open_table(DELIVERIES)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            tx.open_table(DELIVERIES)?
                .insert(delivery.id, codec::encode(&delivery).as_slice())?;
            tx.open_table(PROJECT_DELIVERIES)?
                .insert((delivery.project.as_str(), delivery.id), ())?;
            if delivery.redelivery_of.is_none() {
                tx.open_table(DELIVERY_IDS)?.insert(
                    (delivery.project.as_str(), delivery.delivery_id.as_str()),
                    delivery.id,
                )?;
            }
            Ok(Ok(delivery))
        })
        .await
    }

    pub async fn update_delivery(
        &self,
        id: u64,
        change: impl FnOnce(&mut Delivery) + Send + 'static,
    ) -> Result<Delivery> {
        self.write(move |tx| {
            let mut table = tx.open_table(DELIVERIES)?;
            let mut delivery: Delivery = match table.get(id)? {
                Some(v) => codec::decode(DELIVERIES, v.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: format!("delivery {id}"),
                    });
                }
            };
            change(&mut delivery);
            table.insert(id, codec::encode(&delivery).as_slice())?;
            Ok(delivery)
        })
        .await
    }

    pub async fn delivery(&self, id: u64) -> Result<Option<Delivery>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx.open_table(DELIVERIES)?.get(id)? {
                Some(v) => Ok(Some(codec::decode(DELIVERIES, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// A project's deliveries, newest first.
    pub async fn project_deliveries(&self, project: &str, limit: usize) -> Result<Vec<Delivery>> {
        let project = project.to_string();
        self.read(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(PROJECT_DELIVERIES)?;
            let deliveries = tx.open_table(DELIVERIES)?;
            let mut out = Vec::new();
            for item in index
                .range((project.as_str(), 0)..=(project.as_str(), u64::MAX))?
                .rev()
                .take(limit)
            {
                let id = item?.0.value().1;
                if let Some(v) = deliveries.get(id)? {
                    out.push(codec::decode(DELIVERIES, v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Stores a new schedule (its id is assigned here); names are unique per project.
    pub async fn create_schedule(&self, mut schedule: Schedule, audit: Record) -> Result<Schedule> {
        self.write(move |tx| {
            let mut table = tx.open_table(SCHEDULES)?;
            for item in table.iter()? {
                let other: Schedule = codec::decode(SCHEDULES, item?.1.value())?;
                if other.project == schedule.project && other.name == schedule.name {
                    return Err(Error::Conflict(format!(
                        "project \"{}\" already has a schedule \"{}\"",
                        schedule.project, schedule.name
                    )));
                }
            }
            schedule.id = table.last()?.map_or(1, |(k, _)| k.value() + 1);
            table.insert(schedule.id, codec::encode(&schedule).as_slice())?;
            drop(table);
            tx.audit(audit.detail(format!(
                "schedule {} \"{}\" {} ({})",
                schedule.id, schedule.name, schedule.cron, schedule.timezone
            )))?;
            Ok(schedule)
        })
        .await
    }

    /// Changes a schedule (audited when `audit` is given; ticks are not).
    pub async fn update_schedule(
        &self,
        id: u64,
        audit: Option<Record>,
        change: impl FnOnce(&mut Schedule) -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<Schedule> {
        self.write(move |tx| {
            let mut table = tx.open_table(SCHEDULES)?;
            let mut schedule: Schedule = match table.get(id)? {
                Some(v) => codec::decode(SCHEDULES, v.value())?,
                None => {
                    return Err(Error::NotFound {
                        what: format!("schedule {id}"),
                    });
                }
            };
            change(&mut schedule).map_err(Error::Invalid)?;
            table.insert(id, codec::encode(&schedule).as_slice())?;
            drop(table);
            if let Some(audit) = audit {
                tx.audit(audit.detail(format!(
                    "schedule {} \"{}\" {} ({}), {}",
                    schedule.id,
                    schedule.name,
                    schedule.cron,
                    schedule.timezone,
                    if schedule.enabled {
                        "enabled"
                    } else {
                        "disabled"
                    }
                )))?;
            }
            Ok(schedule)
        })
        .await
    }

    pub async fn delete_schedule(&self, id: u64, audit: Record) -> Result<()> {
        self.write(move |tx| {
            let removed = tx.open_table(SCHEDULES)?.remove(id)?.is_some();
            if !removed {
                return Err(Error::NotFound {
                    what: format!("schedule {id}"),
                });
            }
            tx.audit(audit.detail(format!("schedule {id}")))?;
            Ok(())
        })
        .await
    }

    pub async fn schedule(&self, id: u64) -> Result<Option<Schedule>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx.open_table(SCHEDULES)?.get(id)? {
                Some(v) => Ok(Some(codec::decode(SCHEDULES, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every schedule (of every project).
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.read(|db| {
            let tx = db.begin_read()?;
            let mut out = Vec::new();
            for item in tx.open_table(SCHEDULES)?.iter()? {
                out.push(codec::decode(SCHEDULES, item?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn poll_state(&self, project_id: u64) -> Result<Option<PollState>> {
        self.read(move |db| {
            let tx = db.begin_read()?;
            match tx.open_table(POLL_STATES)?.get(project_id)? {
                Some(v) => Ok(Some(codec::decode(POLL_STATES, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn save_poll_state(&self, project_id: u64, state: PollState) -> Result<()> {
        self.write(move |tx| {
            tx.open_table(POLL_STATES)?
                .insert(project_id, codec::encode(&state).as_slice())?;
            Ok(())
        })
        .await
    }
}
