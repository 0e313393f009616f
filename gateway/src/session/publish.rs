//! The store → encode → publish phases of a message, shared by client sends and plugin
//! notices: append once, encode the push once (and, for a private message, its
//! placeholder once), publish once per message. A retried send that finds its message
//! already stored publishes it again, in case the first attempt died before publishing.

use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{Message, encode_push};

use super::visibility::placeholder;
use crate::bus::{Bus, Event, PrivateDelivery, Topic};
use crate::session::{RequestError, now_ms};
use crate::store::{Appended, NewMessage, PageFrom, SeqRange, Store, StoreError, StoredMessage};
use crate::unread::{Counted, Unread};

pub struct Publisher {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    unread: Arc<Unread>,
}

impl Publisher {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, unread: Arc<Unread>) -> Self {
        Self { store, bus, unread }
    }

    /// The unread counts every stored message is staged into.
    pub fn unread(&self) -> &Arc<Unread> {
        &self.unread
    }

    /// Appends `message` to its group's log and publishes it, unless it is a repeat.
    pub async fn publish(&self, message: NewMessage) -> Result<Appended, RequestError> {
        let mut results = self.publish_batch(vec![message]).await;
        results.pop().expect("one result per message")
    }

    /// Appends `messages` in order as one store step (one fsync on the embedded store)
    /// and publishes each that is not a repeat: one result per message.
    pub async fn publish_batch(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<Appended, RequestError>> {
        // What publishing needs once the store has given each its seq.
        let kept: Vec<_> = messages
            .iter()
            .map(|m| {
                let (group, sender) = (m.group.clone(), m.sender.clone());
                (group, sender, m.visible_to.clone(), m.body.clone())
            })
            .collect();
        let appended = match self.store.append_batch(messages).await {
            Ok(appended) => appended,
            Err(error) => {
                let error = error.to_string();
                return kept
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(error.clone()).into()))
                    .collect();
            }
        };
        let mut results = Vec::with_capacity(kept.len());
        for ((group, sender, visible_to, body), appended) in kept.into_iter().zip(appended) {
            let appended = match appended {
                Ok(appended) => appended,
                Err(error) => {
                    results.push(Err(error.into()));
                    continue;
                }
            };
            if appended.duplicate {
                // The first attempt may have died between append and publish (a killed
                // gateway): publish the stored message again; receivers drop seqs they have.
                self.republish(&group, appended.seq).await;
                results.push(Ok(appended));
                continue;
            }
            self.unread.stage(
                &group,
                Counted {
                    seq: appended.seq,
                    sender: sender.clone(),
                    visible_to: visible_to.clone(),
                },
            );
            let stored = StoredMessage {
                group,
                seq: appended.seq,
                sender,
                ts_ms: appended.ts_ms,
                body,
                visible_to,
            };
            self.broadcast(stored).await;
            results.push(Ok(appended));
        }
        results
    }

    /// Publishes a stored message on its group's topic, encoded once for every receiver.
    async fn broadcast(&self, stored: StoredMessage) {
        let StoredMessage {
            group,
            seq,
            sender,
            ts_ms,
            body,
            visible_to,
        } = stored;
        let private = visible_to.is_some();
        let push = encode_push(&Message {
            group: group.clone(),
            seq,
            sender: sender.clone(),
            ts_ms,
            flags: if private { Message::FLAG_PRIVATE } else { 0 },
            body,
        });
        let private = visible_to.map(|visible_to| PrivateDelivery {
            sender,
            visible_to,
            placeholder: encode_push(&placeholder(&group, seq, ts_ms, 0)),
        });
        let event = Event::Message {
            group: group.clone(),
            seq,
            push,
            private,
        };
        // Stored is what counts: a receiver that misses this event finds the gap and reads the log.
        if let Err(error) = self.bus.publish(Topic::Group(group.clone()), event).await {
            tracing::warn!(%group, seq, %error, "publish failed; receivers will catch up from the log");
        }
    }

    /// Publishes message `seq` of `group` again, as the log holds it.
    async fn republish(&self, group: &str, seq: u64) {
        let range = SeqRange {
            after: seq - 1,
            before: seq + 1,
        };
        match self.store.messages(group, range, PageFrom::Oldest, 1).await {
            Ok(mut found) if !found.is_empty() => self.broadcast(found.remove(0)).await,
            Ok(_) => tracing::warn!(%group, seq, "a duplicate send names a message the log lacks"),
            Err(error) => tracing::warn!(%group, seq, %error, "cannot republish"),
        }
    }

    /// A notice from `plugin` to one member of `group`, visible to them only.
    pub async fn notice(
        &self,
        plugin: &str,
        group: &str,
        user: &str,
        body: Vec<u8>,
    ) -> Result<u64, RequestError> {
        if self.store.membership(group, user).await?.is_none() {
            return Err(RequestError::NotMember(group.to_owned()));
        }
        if body.len() > chat_protocol::MAX_BODY_LEN {
            return Err(RequestError::BodyTooLarge(body.len()));
        }
        let notice = NewMessage {
            group: group.to_owned(),
            sender: format!("{}{plugin}", chat_protocol::PLUGIN_SENDER_PREFIX),
            msg_id: format!("notice-{:016x}", rand::random::<u64>()),
            body: Bytes::from(body),
            ts_ms: now_ms(),
            visible_to: Some(vec![user.to_owned()]),
        };
        Ok(self.publish(notice).await?.seq)
    }
}
