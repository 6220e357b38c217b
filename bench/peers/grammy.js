// grammY webhook server for make bench: /start answered inline (webhook
// reply) with the reply handler's text, over HTTPS, only on the secret path
// with the secret-token header.  Usage: node grammy.js PORT CERT KEY PATH SECRET
"use strict";
const fs = require("fs");
const https = require("https");
const { Bot, webhookCallback } = require("grammy");

const [port, cert, key, path, secret] = process.argv.slice(2);
const bot = new Bot("110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", {
  botInfo: { id: 110201543, is_bot: true, first_name: "Bench",
             username: "BenchBot", can_join_groups: true,
             can_read_all_group_messages: false,
             supports_inline_queries: false },
  client: { canUseWebhookReply: (method) => method === "sendMessage" },
});
bot.command("start", (ctx) =>
  ctx.reply(`Hello, ${ctx.from.first_name}! I am a bot that says hello.`));
const handle = webhookCallback(bot, "http", { secretToken: secret });
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
  (req, res) => {
    if (req.method !== "POST" || req.url !== path) {
      res.writeHead(404).end();
      return;
    }
    handle(req, res);
  }).listen(Number(port), "127.0.0.1");
