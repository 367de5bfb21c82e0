//! Sales: checked against the replica, sent, and answered with the
//! warehouse's decision.

use std::time::Instant;

use serde_json::json;
use tally_wire::reject_reason;

use super::{
    answer, counter, reason_words, refusal, refusal_with_stock, status_for, Answer, Ask, Outcome,
    OutcomeReport, Refused, Request, StockLine, StoreNode, Waiting,
};

/// Said of every refusal the replica decided.
const LOCALLY: &str = "checked against this store's replica; nothing was sent";

impl StoreNode {
    /// Checks and sends a sale-like ask: `(client_seq, sku, what it waits
    /// for)`, or the answer that refuses it now.
    pub(super) fn start(&mut self, ask: &Ask) -> Result<(u32, u32, Waiting), Answer> {
        self.count(counter::SALES_REQUESTED);
        let location = self.known_location()?;
        if let Some(reason) = self.link_down_reason(tally_client::consumer::monotonic_ns()) {
            self.count(counter::SALES_REFUSED_LINK_DOWN);
            let message = format!(
                "sale refused: the store is cut off from the appliance ({reason}); stock \
                 reads are served from this store's replica, marked stale, until the link \
                 returns"
            );
            return Err(refusal(503, "link_down", message, self.freshness()));
        }
        let (request, sku, waiting) = self.request_for(ask, location)?;
        match self.pos.submit(request) {
            Ok(client_seq) => Ok((client_seq, sku, waiting)),
            Err(refused) => Err(self.refused(refused, ask, location, sku)),
        }
    }

    /// The till's request for `ask` at `location`, the SKU it concerns and
    /// what the asker waits for.
    fn request_for(&self, ask: &Ask, location: u16) -> Result<(Request, u32, Waiting), Answer> {
        let fresh = self.freshness();
        let origin = self.pos.origin();
        let replica = self.pos.replica();
        Ok(match *ask {
            Ask::Sale { ref sku, qty } => {
                let sku = self.sku(sku)?;
                let request = Request::Order { location, sku, qty };
                (request, sku, Waiting::Sale { qty })
            }
            Ask::Hold {
                ref sku,
                qty,
                ttl_ms,
            } => {
                let sku = self.sku(sku)?;
                if ttl_ms == 0 || ttl_ms > self.hold_ttl_ms_max {
                    let message = format!(
                        "a hold lasts 1 to {} ms, not {ttl_ms}",
                        self.hold_ttl_ms_max
                    );
                    return Err(refusal(422, "invalid_ttl", message, fresh));
                }
                let request = Request::Reserve {
                    location,
                    sku,
                    qty,
                    ttl_ms,
                };
                (request, sku, Waiting::Hold { qty })
            }
            Ask::Confirm { hold_id } | Ask::Release { hold_id } => {
                let Some(hold) = replica.hold_by_client(origin, hold_id) else {
                    let message = format!("no open hold {hold_id} of this store ({LOCALLY})");
                    self.count(counter::SALES_REFUSED_LOCALLY);
                    return Err(refusal(404, "no_such_hold", message, fresh));
                };
                if let Ask::Confirm { .. } = ask {
                    (
                        Request::Confirm { hold_id },
                        hold.sku,
                        Waiting::Confirm { hold_id },
                    )
                } else {
                    (
                        Request::Release { hold_id },
                        hold.sku,
                        Waiting::Release { hold_id },
                    )
                }
            }
            Ask::Return { order_id, qty } => self.return_request(order_id, qty, location)?,
            Ask::Stock { .. } | Ask::StockPage { .. } | Ask::Health => {
                unreachable!("reads are not sales")
            }
        })
    }

    /// A return of `qty` units of our order: a modify down, or a cancel of
    /// all that remains.
    fn return_request(
        &self,
        order_id: u64,
        qty: u32,
        location: u16,
    ) -> Result<(Request, u32, Waiting), Answer> {
        let fresh = self.freshness();
        let record = self
            .pos
            .replica()
            .order(self.pos.origin(), order_id)
            .filter(|record| record.remaining > 0);
        let Some(record) = record else {
            self.count(counter::SALES_REFUSED_LOCALLY);
            let message =
                format!("order {order_id} of this store has nothing left to return ({LOCALLY})");
            return Err(refusal(404, "no_such_order", message, fresh));
        };
        if record.location != location {
            let message = format!("order {order_id} was not sold at {}", self.location_name);
            return Err(refusal(403, "wrong_location", message, fresh));
        }
        if qty == 0 || qty > record.remaining {
            let message = format!(
                "order {order_id} has {} units left to return, not {qty}",
                record.remaining
            );
            return Err(refusal(422, "invalid_quantity", message, fresh));
        }
        let request = if qty == record.remaining {
            Request::Cancel { order_id }
        } else {
            Request::Modify {
                order_id,
                new_qty: record.remaining - qty,
            }
        };
        Ok((request, record.sku, Waiting::Return { order_id, qty }))
    }

    /// The answer for a command the till would not send.
    fn refused(&self, refused: Refused, ask: &Ask, location: u16, sku: u32) -> Answer {
        let fresh = self.freshness();
        match refused {
            Refused::WouldFail(reason) => {
                self.count(counter::SALES_REFUSED_LOCALLY);
                let symbol = self.symbol(sku);
                let line = StockLine {
                    location: &self.location_name,
                    sku: &symbol,
                    cell: self.cell(location, sku),
                };
                let message = match (reason, ask) {
                    (
                        reject_reason::INSUFFICIENT,
                        Ask::Sale { qty, .. } | Ask::Hold { qty, .. },
                    ) => {
                        format!(
                            "insufficient stock: {qty} {symbol} asked, {} available at {} ({LOCALLY})",
                            line.cell.available, self.location_name
                        )
                    }
                    _ => format!("refused: {} ({LOCALLY})", reason_words(reason)),
                };
                let error = reason_words(reason).replace(' ', "_");
                refusal_with_stock(status_for(reason), &error, message, &line, fresh)
            }
            Refused::Busy => refusal(
                409,
                "busy",
                "a command about this hold or order still awaits its decision".to_string(),
                fresh,
            ),
            Refused::Full => refusal(
                503,
                "too_many_in_flight",
                "too many sales await their decision: retry in a moment".to_string(),
                fresh,
            ),
            Refused::NotReady | Refused::Closed => {
                self.count(counter::SALES_REFUSED_LINK_DOWN);
                let message = "sale refused: order entry is not logged in to the appliance";
                refusal(503, "link_down", message.to_string(), fresh)
            }
        }
    }

    // -------------------------------------------------------------------
    // Decisions.

    /// Answers the askers whose command was decided this round, and keeps
    /// the answer under its idempotency key (also when the asker stopped
    /// waiting: a retry gets it).
    pub(super) fn answer_decisions(&mut self) -> usize {
        let mut reports = std::mem::take(&mut self.reports);
        let mut answered = 0;
        for report in &reports {
            let waiter = self
                .waiters
                .iter()
                .position(|waiter| waiter.client_seq == report.client_seq)
                .map(|i| self.waiters.swap_remove(i));
            let keyed = self
                .keys
                .pending(report.client_seq)
                .map(|(_, sku, waiting)| (sku, waiting));
            let Some((sku, waiting)) = waiter
                .as_ref()
                .map(|waiter| (waiter.sku, waiter.waiting))
                .or(keyed)
            else {
                continue;
            };
            let answer = self.decided(sku, waiting, report);
            if keyed.is_some() {
                // Not decided (the session ended): nothing was done, so a
                // retry with the key sends it again.
                let kept = (report.outcome != Outcome::NotDecided).then(|| answer.clone());
                self.keys.decided(report.client_seq, kept);
            }
            if let Some(waiter) = waiter {
                let _ = waiter.reply.try_send(answer);
                answered += 1;
            }
        }
        reports.clear();
        self.reports = reports;
        answered
    }

    fn decided(&self, sku: u32, waiting: Waiting, report: &OutcomeReport) -> Answer {
        let fresh = self.freshness();
        let location = self.location.unwrap_or(0);
        let symbol = self.symbol(sku);
        let line = StockLine {
            location: &self.location_name,
            sku: &symbol,
            cell: self.cell(location, sku),
        };
        let (status, message) = match report.outcome {
            Outcome::Rejected { reason } => {
                self.count(counter::SALES_REJECTED);
                let message = format!("the warehouse rejected it: {}", reason_words(reason));
                let error = reason_words(reason).replace(' ', "_");
                return refusal_with_stock(status_for(reason), &error, message, &line, fresh);
            }
            Outcome::GatewayRejected { reason } => {
                self.count(counter::SALES_REJECTED);
                let message = format!("the appliance refused it: {}", reason_words(reason));
                let error = reason_words(reason).replace(' ', "_");
                return refusal_with_stock(status_for(reason), &error, message, &line, fresh);
            }
            Outcome::NotDecided => {
                self.count(counter::SALES_REJECTED);
                let message = "not sold: the session ended (a rollover) before the warehouse \
                               decided it, so nothing was done; send it again"
                    .to_string();
                return refusal_with_stock(503, "not_decided", message, &line, fresh);
            }
            _ => self.accepted(waiting, report, &symbol),
        };
        let message = format!("{message} — {}", line.sentence());
        let extra = json!({
            "client_seq": report.client_seq,
            "cmd_seq": report.cmd_seq,
            "id": report.id,
            "stock": line.json(),
        });
        answer(status, message, extra, fresh)
    }

    /// Status and sentence of an accepted command.
    fn accepted(&self, waiting: Waiting, report: &OutcomeReport, symbol: &str) -> (u16, String) {
        let id = report.id;
        match waiting {
            Waiting::Sale { qty } => {
                self.count(counter::SALES_FILLED);
                (201, format!("sold {qty} {symbol} (order {id})"))
            }
            Waiting::Hold { qty } => (201, format!("held {qty} {symbol} (hold {id})")),
            Waiting::Confirm { hold_id } => {
                self.count(counter::SALES_FILLED);
                (200, format!("hold {hold_id} confirmed: sold"))
            }
            Waiting::Release { hold_id } => (200, format!("hold {hold_id} released")),
            Waiting::Return { order_id, qty } => {
                (200, format!("returned {qty} {symbol} of order {order_id}"))
            }
        }
    }

    /// Answers 202 to askers whose decision did not come in time.
    pub(super) fn expire_waiters(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].deadline > now {
                i += 1;
                continue;
            }
            let waiter = self.waiters.swap_remove(i);
            self.count(counter::DECISION_TIMEOUTS);
            let message = format!(
                "sent (client_seq {}) but not decided within {} ms; it will still be decided: \
                 read the stock in a moment",
                waiter.client_seq,
                self.decision_timeout.as_millis()
            );
            let extra = json!({ "client_seq": waiter.client_seq, "decided": false });
            let _ = waiter
                .reply
                .try_send(answer(202, message, extra, self.freshness()));
        }
    }

    /// Tells every waiting asker the node is stopping.
    pub(super) fn answer_stopping(&mut self) {
        let fresh = self.freshness();
        for waiter in std::mem::take(&mut self.waiters) {
            let message = format!(
                "the store node is stopping; command client_seq {} was sent and will still be \
                 decided",
                waiter.client_seq
            );
            let extra = json!({ "client_seq": waiter.client_seq, "decided": false });
            let _ = waiter.reply.try_send(answer(503, message, extra, fresh));
        }
    }
}
