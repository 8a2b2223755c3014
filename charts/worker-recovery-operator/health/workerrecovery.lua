-- Argo CD health check for workerrecovery.io/WorkerRecovery: a run is Healthy when it
-- succeeded, Progressing while it is pending or running, Degraded when it failed (a run is
-- never retried: create a new one).
local hs = { status = "Progressing", message = "waiting for the operator to start the run" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not observed the latest spec yet"
  return hs
end
local c = {}
for _, condition in ipairs(obj.status.conditions) do
  c[condition.type] = condition
end
local phase = obj.status.phase or "Pending"
local function said(condition)
  return phase .. ": " .. condition.reason .. ": " .. condition.message
end
if c.Stalled ~= nil and c.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(c.Stalled)
elseif c.Reconciling ~= nil and c.Reconciling.status == "True" then
  hs.message = said(c.Reconciling)
elseif c.Ready ~= nil and c.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(c.Ready)
elseif c.Ready ~= nil then
  hs.message = said(c.Ready)
end
return hs
