-- wrk script: POSTs a realistic private /start update (with its
-- bot_command entity) to the secret path with the secret-token header, a
-- fresh update_id per request, and checks every answer: a 200 whose body
-- is the inline sendMessage (or, with a third argument "200", any 200: for
-- servers that cannot answer inline).  Bad answers are counted and reported.
local counter = 0
local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   path = args[1]
   secret = args[2]
   inline = args[3] ~= "200"
   connection = args[4] or "keep-alive"
   bad = 0
   -- update_ids unique across runs too (args[5]): a repeat is a duplicate
   base = (tonumber(args[5]) or 0) * 10000000000 + id * 100000000
   -- a chat of its own per run: an answer a closed connection could not
   -- take at the end of a run becomes a follow-up, and the next run's
   -- answers to that chat would rightly queue behind it
   chat = 31337 + (tonumber(args[5]) or 0)
end

request = function()
   counter = counter + 1
   local uid = base + counter
   local body = string.format(
      '{"update_id":%d,\n"message":{"message_id":%d,"from":{"id":31337,' ..
      '"is_bot":false,"first_name":"Ann","language_code":"en"},' ..
      '"chat":{"id":%d,"first_name":"Ann","type":"private"},' ..
      '"date":1781000000,"text":"/start","entities":[{"offset":0,' ..
      '"length":6,"type":"bot_command"}]}}', uid, uid, chat)
   return wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Telegram-Bot-Api-Secret-Token"] = secret,
      ["Connection"] = connection,
   }, body)
end

response = function(status, headers, body)
   if status ~= 200 or
      (inline and not string.find(body, '"sendMessage"', 1, true)) then
      bad = bad + 1
   end
end

done = function(summary, latency, requests)
   local total = 0
   for _, t in ipairs(threads) do
      total = total + t:get("bad")
   end
   io.write(string.format("BAD %d\n", total))
   io.write(string.format("P50 %d\nP99 %d\n", latency:percentile(50),
      latency:percentile(99)))
end
