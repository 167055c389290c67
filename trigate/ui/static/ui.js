// trigate's web UI: the copy button, the usage charts and the playground's streamed chat.
// Loaded as a file (the pages' Content-Security-Policy allows no inline script).
"use strict";

function setUpCopyButtons(root) {
  root.querySelectorAll("button.copy").forEach((button) => {
    button.addEventListener("click", async () => {
      const text = document.querySelector(button.dataset.copy).textContent;
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    });
  });
}

function drawUsageCharts() {
  const source = document.getElementById("usage-data");
  if (!source || !window.Chart) return;
  const usage = JSON.parse(source.textContent);
  const stacked = { x: { stacked: true }, y: { stacked: true, beginAtZero: true } };
  new Chart(document.getElementById("spend-chart"), {
    type: "bar",
    data: {
      labels: usage.days,
      datasets: Object.entries(usage.spend_by_model).map(([model, spend]) => ({ label: model, data: spend })),
    },
    options: { animation: false, scales: stacked },
  });
  new Chart(document.getElementById("keys-chart"), {
    type: "bar",
    data: {
      labels: usage.top_keys.map((entry) => entry[0]),
      datasets: [{ label: "spend ($)", data: usage.top_keys.map((entry) => entry[1]) }],
    },
    options: { animation: false, indexAxis: "y" },
  });
  new Chart(document.getElementById("tokens-chart"), {
    type: "line",
    data: {
      labels: usage.days,
      datasets: [
        { label: "prompt tokens", data: usage.prompt_tokens },
        { label: "completion tokens", data: usage.completion_tokens },
      ],
    },
    options: { animation: false },
  });
}

function appendTurn(transcript, role, text) {
  const turn = document.createElement("p");
  turn.className = "turn " + role;
  const who = document.createElement("strong");
  who.textContent = role + ": ";
  const said = document.createElement("span");
  said.textContent = text;
  turn.append(who, said);
  transcript.append(turn);
  return said;
}

function setUpPlayground() {
  const form = document.getElementById("chat");
  if (!form) return;
  const transcript = document.getElementById("transcript");
  const messages = [];
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("chat-message");
    const content = input.value;
    input.value = "";
    messages.push({ role: "user", content });
    appendTurn(transcript, "user", content);
    const said = appendTurn(transcript, "assistant", "");
    const response = await fetch("/ui/playground/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
      body: JSON.stringify({ model: document.getElementById("chat-model").value, messages }),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    let answer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      if (buffered.startsWith("{")) continue;  // an error, answered whole as JSON
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const frame = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) { said.textContent = "Error: " + chunk.error.message; continue; }
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) { answer += delta.content; said.textContent = answer; }
        if (chunk.usage) {
          document.getElementById("chat-usage").textContent =
            `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
        }
      }
    }
    if (buffered.startsWith("{")) {
      const error = JSON.parse(buffered).error;
      said.textContent = "Error: " + (error ? error.message : buffered);
      said.parentElement.classList.add("failed");
      return;
    }
    messages.push({ role: "assistant", content: answer });
    said.parentElement.classList.add("done");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons(document);
  drawUsageCharts();
  setUpPlayground();
});
