-- wrk script of bench/cluster_bench.py: bench/webhook.lua (its checks
-- and its report: every answer a 200 with the inline sendMessage), but
-- with a fresh chat per request as well as a fresh update_id, so that
-- each answer goes inline and its follow-up queues behind nothing.
-- Arguments: path, secret, and a number unique to this wrk process and
-- run, so that no two processes of a run (one per instance) send the same
-- update_id.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "webhook.lua")

function init(args)
   path = args[1]
   secret = args[2]
   inline = true
   bad = 0
   counter = 0
   base = (tonumber(args[3]) or 0) * 100000000 + id * 10000000
end

request = function()
   counter = counter + 1
   local uid = base + counter
   local body = string.format(
      '{"update_id":%d,\n"message":{"message_id":%d,"from":{"id":%d,' ..
      '"is_bot":false,"first_name":"Ann","language_code":"en"},' ..
      '"chat":{"id":%d,"first_name":"Ann","type":"private"},' ..
      '"date":1781000000,"text":"/start","entities":[{"offset":0,' ..
      '"length":6,"type":"bot_command"}]}}', uid, uid, uid, uid)
   return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Telegram-Bot-Api-Secret-Token"] = secret,
   }, body)
end
