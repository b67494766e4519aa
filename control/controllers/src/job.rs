//! The Job controller: runs pods until `completions` succeed (`parallelism` at a time), replacing
//! failed ones with exponential backoff until more than `backoffLimit` have failed; sets the
//! `Complete` / `Failed` conditions (after `SuccessCriteriaMet` / `FailureTarget`) as Kubernetes
//! does.
//!
//! Pods are tracked with the `batch.kubernetes.io/job-tracking` finalizer: a finished pod is
//! first recorded in `status.uncountedTerminatedPods`, then loses the finalizer, then is counted
//! in `succeeded` / `failed` — so counts survive pods being deleted and controller restarts.

use crate::Ctx;
use crate::replicas::{create_pods, delete_pods, write_status};
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.jobs.on_change(move |old, new| {
        if let Some(j) = new.or(old) {
            q.add(ObjKey::of(j.as_ref()));
        }
    });
    ctx.pods.on_change(move |old, new| {
        for p in [old, new].into_iter().flatten() {
            if let Some(r) = util::controller_of_kind(&p.metadata, "batch", "Job") {
                queue.add(ObjKey::new(p.namespace().unwrap_or_default(), r.name.clone()));
            }
        }
    });
}

fn has_tracking(p: &Pod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// A pod that will not run any more: finished, or deleted before it finished (which counts as
/// a failure).
fn is_done(p: &Pod) -> bool {
    util::is_pod_finished(p) || util::is_terminating(&p.metadata)
}

fn succeeded(p: &Pod) -> bool {
    util::pod_phase(p) == "Succeeded"
}

fn condition_true(job: &Job, t: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
}

fn finish_time(p: &Pod) -> Option<Timestamp> {
    let s = p.status.as_ref()?;
    let from_containers = s
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max();
    from_containers.or_else(|| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    })
}

pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn completion_index(p: &Pod) -> Option<i64> {
    p.annotations().get(COMPLETION_INDEX).or_else(|| p.labels().get(COMPLETION_INDEX)).and_then(|i| i.parse().ok())
}

/// `"0-2,4"` → {0, 1, 2, 4}.
pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// {0, 1, 2, 4} → `"0-2,4"`.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

async fn remove_tracking(ctx: &Ctx, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
    for p in pods {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let kept: Vec<&String> = p.finalizers().iter().filter(|f| *f != TRACKING_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": p.resource_version()}});
        match api
            .patch(
                &p.name_any(),
                &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let keys: Vec<ObjKey> = pods.iter().map(|p| ObjKey::of(p.as_ref())).collect();
    ctx.pods
        .wait_until(Duration::from_secs(2), |s| keys.iter().all(|k| s.get(k).is_none_or(|p| !has_tracking(&p))))
        .await;
    Ok(())
}

fn set_cond(conds: &mut Vec<Value>, t: &str, reason: &str, message: &str) {
    if conds.iter().any(|c| c["type"] == t && c["status"] == "True") {
        return;
    }
    conds.retain(|c| c["type"] != t);
    let now = json!(util::now());
    conds.push(json!({"type": t, "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now}));
}

fn spec_is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// An Indexed Job's pod for completion index `i`: annotation and label, `<job>-<i>-` names,
/// hostname `<job>-<i>` and `JOB_COMPLETION_INDEX` in every container.
fn set_index(p: &mut Pod, job: &str, i: i64) {
    p.metadata.generate_name = Some(format!("{job}-{i}-"));
    p.metadata.annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), i.to_string());
    p.metadata.labels.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), i.to_string());
    if let Some(spec) = p.spec.as_mut() {
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{job}-{i}"));
        }
        let env = k8s_openapi::api::core::v1::EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
            value: None,
        };
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let e = c.env.get_or_insert_with(Vec::new);
            if !e.iter().any(|x| x.name == env.name) {
                e.push(env.clone());
            }
        }
    }
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let job = ctx.jobs.get(&key);
    let job_uid = job.as_ref().and_then(|j| j.uid()).unwrap_or_default();
    // Pods whose Job is gone (or replaced) only need their finalizer removed.
    let strays: Vec<Arc<Pod>> = ctx
        .pods
        .list_ns(&key.namespace)
        .into_iter()
        .filter(|p| {
            has_tracking(p)
                && util::controller_of_kind(&p.metadata, "batch", "Job")
                    .is_some_and(|r| r.name == key.name && r.uid != job_uid)
        })
        .collect();
    if !strays.is_empty() {
        remove_tracking(&ctx, &strays).await?;
    }
    let Some(job) = job else { return Ok(Action::done()) };
    if job.metadata.deletion_timestamp.is_some() {
        // Going away (its pods with it): only release the pods' finalizers.
        let tracked: Vec<Arc<Pod>> = ctx.pods.owned_by(&job_uid).into_iter().filter(|p| has_tracking(p)).collect();
        if !tracked.is_empty() {
            remove_tracking(&ctx, &tracked).await?;
        }
        return Ok(Action::done());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let mut status = serde_json::to_value(&job.status)?;
    if !status.is_object() {
        status = json!({});
    }
    let pods: Vec<Arc<Pod>> =
        ctx.pods.owned_by(&job_uid).into_iter().filter(|p| util::is_controlled_by(&p.metadata, &job_uid)).collect();
    let finished_job = condition_true(&job, "Complete") || condition_true(&job, "Failed");

    // 1. Record finished pods as uncounted, 2. drop their finalizers, 3. count them.
    let mut unc_s: BTreeSet<String> = status["uncountedTerminatedPods"]["succeeded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut unc_f: BTreeSet<String> = status["uncountedTerminatedPods"]["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let done_tracked: Vec<Arc<Pod>> = pods.iter().filter(|p| has_tracking(p) && is_done(p)).cloned().collect();
    let mut recorded = false;
    if !finished_job {
        for p in &done_tracked {
            let uid = p.uid().unwrap_or_default();
            if !unc_s.contains(&uid) && !unc_f.contains(&uid) {
                if succeeded(p) {
                    unc_s.insert(uid)
                } else {
                    unc_f.insert(uid)
                };
                recorded = true;
            }
        }
    }
    if recorded {
        status["uncountedTerminatedPods"] = json!({"succeeded": unc_s, "failed": unc_f});
        if spec_is_indexed(&job) {
            // An index is complete as soon as its pod's success is recorded.
            let mut completed = parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
            completed.extend(done_tracked.iter().filter(|p| succeeded(p)).filter_map(|p| completion_index(p)));
            status["completedIndexes"] = json!(format_indexes(&completed));
        }
        write_status(Api::namespaced(ctx.client.clone(), &key.namespace), job.as_ref(), status.clone(), COMPONENT)
            .await?;
        let rv = job.resource_version();
        ctx.jobs.wait_until(Duration::from_secs(2), |s| s.get(&key).is_none_or(|j| j.resource_version() != rv)).await;
        // The next round continues from the recorded status.
        return Ok(Action::requeue(Duration::ZERO));
    }
    if !done_tracked.is_empty() {
        remove_tracking(&ctx, &done_tracked).await?;
    }
    let still_tracked: BTreeSet<String> =
        ctx.pods.owned_by(&job_uid).iter().filter(|p| has_tracking(p)).filter_map(|p| p.uid()).collect();
    let mut n_succeeded = status["succeeded"].as_i64().unwrap_or(0);
    let mut n_failed = status["failed"].as_i64().unwrap_or(0);
    let counted_s: Vec<String> = unc_s.iter().filter(|u| !still_tracked.contains(*u)).cloned().collect();
    let counted_f: Vec<String> = unc_f.iter().filter(|u| !still_tracked.contains(*u)).cloned().collect();
    n_succeeded += counted_s.len() as i64;
    n_failed += counted_f.len() as i64;
    let indexed = spec_is_indexed(&job);
    let mut completed: BTreeSet<i64> = parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
    for u in counted_s {
        if let Some(i) = pods.iter().find(|p| p.uid().as_deref() == Some(u.as_str())).and_then(|p| completion_index(p))
        {
            completed.insert(i);
        }
        unc_s.remove(&u);
    }
    for u in counted_f {
        unc_f.remove(&u);
    }

    // Decisions use the snapshot the finished pods were recorded from: a pod finishing since
    // then is still active here (and recorded next round), never a reason to start another.
    let active: Vec<Arc<Pod>> = pods.iter().filter(|p| !is_done(p)).cloned().collect();
    let terminating =
        pods.iter().filter(|p| util::is_terminating(&p.metadata) && !util::is_pod_finished(p)).count() as i64;
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as i64;
    let completions = spec.completions.map(|c| c as i64);
    let backoff_limit = spec.backoff_limit.unwrap_or(6) as i64;
    let suspended = spec.suspend.unwrap_or(false);
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let now = util::now();
    if status["startTime"].is_null() && !suspended {
        status["startTime"] = json!(now);
    }
    let mut requeue = Action::done();
    let mut failure: Option<kube::Error> = None;

    // Terminal decisions.
    let started = status["startTime"].as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let deadline_exceeded = match (spec.active_deadline_seconds, started) {
        (Some(d), Some(s)) if !suspended => {
            let elapsed = (Timestamp::now().as_millisecond() - s.as_millisecond()) as f64 / 1000.0;
            if elapsed < d as f64 {
                requeue = requeue.min(Action::requeue(util::secs(d as f64 - elapsed + 0.05)));
            }
            elapsed >= d as f64
        }
        _ => false,
    };
    let failed_reason = if condition_true(&job, "Failed") || condition_true(&job, "FailureTarget") {
        conds
            .iter()
            .find(|c| (c["type"] == "FailureTarget" || c["type"] == "Failed") && c["status"] == "True")
            .map(|c| (c["reason"].as_str().unwrap_or("").to_string(), c["message"].as_str().unwrap_or("").to_string()))
    } else if n_failed > backoff_limit {
        Some(("BackoffLimitExceeded".to_string(), "Job has reached the specified backoff limit".to_string()))
    } else if deadline_exceeded {
        Some(("DeadlineExceeded".to_string(), "Job was active longer than specified deadline".to_string()))
    } else {
        None
    };
    let complete = !finished_job
        && failed_reason.is_none()
        && match completions {
            Some(c) if indexed => (0..c).all(|i| completed.contains(&i)),
            Some(c) => n_succeeded >= c,
            None => n_succeeded > 0 && active.is_empty(),
        };
    if let Some((reason, message)) = &failed_reason {
        if !active.is_empty() {
            if let Err(e) = delete_pods(&ctx, job.as_ref(), &active, COMPONENT).await {
                failure = Some(e);
            }
        }
        if !condition_true(&job, "FailureTarget") && !condition_true(&job, "Failed") {
            ctx.recorder.warning(COMPONENT, job.as_ref(), reason, message.clone());
        }
        set_cond(&mut conds, "FailureTarget", reason, message);
        if active.is_empty() && terminating == 0 && unc_f.is_empty() && unc_s.is_empty() {
            set_cond(&mut conds, "Failed", reason, message);
        }
    } else if complete || condition_true(&job, "SuccessCriteriaMet") {
        if !active.is_empty() {
            if let Err(e) = delete_pods(&ctx, job.as_ref(), &active, COMPONENT).await {
                failure = Some(e);
            }
        }
        let msg = "Reached expected number of succeeded pods";
        set_cond(&mut conds, "SuccessCriteriaMet", "CompletionsReached", msg);
        if active.is_empty()
            && terminating == 0
            && unc_f.is_empty()
            && unc_s.is_empty()
            && !condition_true(&job, "Complete")
        {
            set_cond(&mut conds, "Complete", "CompletionsReached", msg);
            status["completionTime"] = json!(now);
            ctx.recorder.normal(COMPONENT, job.as_ref(), "Completed", "Job completed");
        }
    } else if !finished_job {
        // Keep `parallelism` pods running (no more than the completions still needed).
        // Indexed: the lowest indexes neither completed, nor finishing, nor running.
        let busy: BTreeSet<i64> = active
            .iter()
            .chain(pods.iter().filter(|p| unc_s.contains(&p.uid().unwrap_or_default())))
            .filter_map(|p| completion_index(p))
            .collect();
        let pending: Vec<i64> =
            (0..completions.unwrap_or(0)).filter(|i| !completed.contains(i) && !busy.contains(i)).collect();
        let want = if suspended {
            0
        } else {
            match completions {
                Some(_) if indexed => parallelism.min(active.len() as i64 + pending.len() as i64),
                Some(c) => parallelism.min(c - n_succeeded - unc_s.len() as i64).max(0),
                None if n_succeeded > 0 => 0,
                None => parallelism,
            }
        };
        let have = active.len() as i64;
        if have < want {
            // Backoff after failures: base × 2^(failures-1) since the last one.
            let failures = n_failed + unc_f.len() as i64;
            let last = pods.iter().filter(|p| util::pod_phase(p) == "Failed").filter_map(|p| finish_time(p)).max();
            let delay = if failures > 0 {
                let d = ctx.config.job_backoff_base.as_secs_f64() * 2f64.powi((failures - 1).min(30) as i32);
                d.min(ctx.config.job_backoff_max.as_secs_f64())
            } else {
                0.0
            };
            let since = last
                .map(|t| (Timestamp::now().as_millisecond() - t.as_millisecond()) as f64 / 1000.0)
                .unwrap_or(f64::MAX);
            if since < delay {
                requeue = requeue.min(Action::requeue(util::secs(delay - since + 0.01)));
            } else {
                let mut t = spec.template.clone();
                let labels =
                    t.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", job_uid.as_str()),
                    ("batch.kubernetes.io/job-name", key.name.as_str()),
                    ("controller-uid", job_uid.as_str()),
                    ("job-name", key.name.as_str()),
                ] {
                    labels.entry(k.to_string()).or_insert_with(|| v.to_string());
                }
                let finalizers =
                    t.metadata.get_or_insert_with(Default::default).finalizers.get_or_insert_with(Vec::new);
                if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
                    finalizers.push(TRACKING_FINALIZER.into());
                }
                if indexed {
                    for i in pending.iter().take((want - have) as usize) {
                        let name = key.name.clone();
                        let r = create_pods(&ctx, job.as_ref(), &t, 1, COMPONENT, |p| set_index(p, &name, *i)).await;
                        if let Err(e) = r {
                            failure = Some(e);
                            break;
                        }
                    }
                } else if let Err(e) =
                    create_pods(&ctx, job.as_ref(), &t, (want - have) as usize, COMPONENT, |_| {}).await
                {
                    failure = Some(e);
                }
            }
        } else if have > want {
            let mut extra = active.clone();
            extra.sort_by_key(|p| util::deletion_rank(p));
            extra.truncate((have - want) as usize);
            if let Err(e) = delete_pods(&ctx, job.as_ref(), &extra, COMPONENT).await {
                failure = Some(e);
            }
        }
        if suspended {
            set_cond(&mut conds, "Suspended", "JobSuspended", "Job suspended");
        } else if let Some(c) = conds.iter_mut().find(|c| c["type"] == "Suspended" && c["status"] == "True") {
            c["status"] = json!("False");
            c["reason"] = json!("JobResumed");
            c["message"] = json!("Job resumed");
            c["lastTransitionTime"] = json!(now);
        }
    }

    // Status from the cache as it is now.
    let pods: Vec<Arc<Pod>> =
        ctx.pods.owned_by(&job_uid).into_iter().filter(|p| util::is_controlled_by(&p.metadata, &job_uid)).collect();
    let active_now = pods.iter().filter(|p| !is_done(p)).count() as i64;
    let terminating_now =
        pods.iter().filter(|p| util::is_terminating(&p.metadata) && !util::is_pod_finished(p)).count() as i64;
    let ready_now = pods.iter().filter(|p| !is_done(p) && util::is_pod_ready(p)).count() as i64;
    let m = status.as_object_mut().expect("object");
    for (k, v) in [("active", active_now), ("succeeded", n_succeeded), ("failed", n_failed)] {
        if v != 0 {
            m.insert(k.into(), json!(v));
        } else {
            m.remove(k);
        }
    }
    m.insert("ready".into(), json!(ready_now));
    if indexed && !completed.is_empty() {
        m.insert("completedIndexes".into(), json!(format_indexes(&completed)));
    }
    m.insert("terminating".into(), json!(terminating_now));
    m.insert(
        "uncountedTerminatedPods".into(),
        if unc_s.is_empty() && unc_f.is_empty() { json!({}) } else { json!({"succeeded": unc_s, "failed": unc_f}) },
    );
    if conds.is_empty() {
        m.remove("conditions");
    } else {
        m.insert("conditions".into(), Value::Array(conds));
    }
    write_status(Api::namespaced(ctx.client.clone(), &key.namespace), job.as_ref(), status, COMPONENT).await?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sets() {
        let s = parse_indexes("0-2,4,7-8");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![0, 1, 2, 4, 7, 8]);
        assert_eq!(format_indexes(&s), "0-2,4,7-8");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}
