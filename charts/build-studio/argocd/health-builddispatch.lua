-- Argo CD health of a BuildDispatch (buildstudio.dpf.dev/v1alpha1), read from its status conditions.
-- Key in argocd-cm: resource.customizations.health.buildstudio.dpf.dev_BuildDispatch
--   Succeeded=True                        -> Healthy
--   Succeeded=False (failed, refused,     -> Degraded: the dispatch ended without its result
--     cancelled, timed out)
--   a ship waiting for a review or for    -> Suspended: only a person (a review dispatch, an
--     spec.approval                            approvedBy) lets it go on
--   anything else (pending, preflight,    -> Progressing
--     queued, running)
-- Written for Lua 5.1 (Argo CD's gopher-lua): no goto, no integer division.
local hs = {}

-- Ship gate refusals that a later review or approval can lift (phases/ship.py, not final).
local waiting_for_people = {
  ApprovalRequired = "waiting for spec.approval from a human",
  ReviewMissing = "waiting for a review dispatch of the source",
  ReviewStale = "waiting for a review of the source's current diff",
  ReviewRequestedChanges = "the review requested changes",
}

local function find(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function text(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  return reason or message or ""
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to pick up the dispatch"
  return hs
end

local done = find(status.conditions, "Succeeded")
if done ~= nil and done.status == "True" then
  hs.status = "Healthy"
  hs.message = text(done.reason, done.message)
  return hs
end
if done ~= nil and done.status == "False" then
  hs.status = "Degraded"
  hs.message = text(done.reason, done.message)
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "the operator has not yet seen generation " .. tostring(generation)
  return hs
end

local why = waiting_for_people[status.reason]
if why ~= nil then
  hs.status = "Suspended"
  hs.message = text(status.reason, status.message or why)
  return hs
end

hs.status = "Progressing"
hs.message = text(status.reason or status.phase, status.message)
return hs
