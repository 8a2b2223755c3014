-- Argo CD health check for workerrecovery.io/ResumePlan: Healthy when every task was released
-- and judged, Progressing while batches are released, Suspended while spec.paused holds it,
-- Degraded when it halted (a batch failed beyond maxFailureRatio) or cannot run.
local hs = { status = "Progressing", message = "waiting for the operator to start the plan" }
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
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = said(c.Ready or c.Completed)
elseif c.Ready ~= nil then
  hs.message = said(c.Ready)
end
return hs
