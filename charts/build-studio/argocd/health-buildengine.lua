-- Argo CD health of a BuildEngine (buildstudio.dpf.dev/v1alpha1), read from its status conditions.
-- Key in argocd-cm: resource.customizations.health.buildstudio.dpf.dev_BuildEngine
--   Present=False or ModelServiceReady=False -> Degraded: dispatches on it would fail or be refused
--   Present=True (ModelServiceReady True or not observed: cloud engines have none) -> Healthy
--   not probed yet, or a spec change not yet probed -> Progressing
-- Written for Lua 5.1 (Argo CD's gopher-lua).
local hs = {}

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
local present = status and find(status.conditions, "Present")
if present == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator's presence check"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "the presence check has not yet run for generation " .. tostring(generation)
  return hs
end

if present.status ~= "True" then
  hs.status = "Degraded"
  hs.message = text(present.reason, present.message)
  return hs
end

local service = find(status.conditions, "ModelServiceReady")
if service ~= nil and service.status == "False" then
  hs.status = "Degraded"
  hs.message = "model service: " .. text(service.reason, service.message)
  return hs
end

hs.status = "Healthy"
hs.message = text(present.reason, present.message)
if service ~= nil then
  hs.message = hs.message .. "; model service: " .. text(service.reason, service.message)
end
return hs
