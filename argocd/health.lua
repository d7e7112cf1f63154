-- Argo CD health check for smtprelay.dev/SmtpRelay.
-- Registered in argocd-cm as resource.customizations.health.smtprelay.dev_SmtpRelay (see
-- argocd-cm-patch.yaml). Argo CD sets the global `obj` to the live object and reads back
-- {status, message}. Written for Lua 5.1 (Argo CD's gopher-lua) and tested with lua5.4.

-- Ready=False reasons that clear up by themselves: the operator is still converging.
-- Any other False reason is a problem in the user's spec or Secrets and needs a human, so it is
-- Degraded: failing loudly beats an Application stuck in Progressing on a typo.
local transient = {
  Progressing = true,
  Reconciling = true,
  RolloutInProgress = true,
  PodsNotReady = true,
  Pending = true,
  Creating = true,
  Scaling = true,
  WaitingForPods = true,
}

local hs = {}

local function find_condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(cond, fallback)
  local text = fallback
  if cond.message ~= nil and cond.message ~= "" then
    text = cond.message
  end
  if cond.reason ~= nil and cond.reason ~= "" then
    return cond.reason .. ": " .. text
  end
  return text
end

local generation = obj.metadata.generation
local status = obj.status

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local observed = status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- kstatus: Stalled=True needs a human (a rejected spec or Secret, a pod that cannot start).
local stalled = find_condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Relay stalled")
  return hs
end

local ready = find_condition(status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

-- The condition carries its own observedGeneration: trust it only when it is current too.
if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- Replicas being scaled away deliver their queues first: still moving, though the relay serves.
local draining = find_condition(status, "Draining")
if ready.status == "True" and draining ~= nil and draining.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(draining, "Draining replicas being scaled away")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  if status.endpoint ~= nil and status.endpoint ~= "" then
    hs.message = "Relay ready at " .. status.endpoint
  else
    hs.message = describe(ready, "Relay ready")
  end
  return hs
end

-- kstatus: Reconciling=True is still moving by itself. Without kstatus conditions (an older
-- operator), the Ready reason decides.
local reconciling = find_condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Relay not ready yet")
  return hs
end

if ready.status == "False" and not transient[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = describe(ready, "Relay not ready")
  return hs
end

-- False with a transient reason, or Unknown.
hs.status = "Progressing"
hs.message = describe(ready, "Relay not ready yet")
return hs
