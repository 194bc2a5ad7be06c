// The mailslot console: a live view of one mailbox for a person, served by `mailslot ui`.
//
// Plain DOM code, no framework and no build step. The Content-Security-Policy forbids inline
// scripts and styles, so every handler is attached here with addEventListener. Message data
// reaches the DOM only through textContent, except a message's `html` field: the body as
// mailslot's safe Markdown renderer made it on the server (everything else in it escaped).
"use strict";

(function () {
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);

  const S = {
    person: "",
    threads: [],        // the list as the server last gave it
    current: null,      // id of the open thread
    info: null,         // the open thread's record
    first: 0,           // lowest seq shown in the transcript
    last: 0,            // highest seq shown
    hasBefore: false,
    loadingBefore: null,
    queue: Promise.resolve(), // serialises transcript updates of the open thread
    replyTo: null,
    agents: [],
    tab: "agents-panel",
    timers: {},
    connected: false,
  };

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = String(v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function toDate(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return new Date(value < 1e12 ? value * 1000 : value);
    const d = new Date(value);
    return isNaN(d.getTime()) ? null : d;
  }

  function relative(value) {
    const d = toDate(value);
    if (!d) return "";
    const s = Math.round((d.getTime() - Date.now()) / 1000);
    const a = Math.abs(s);
    let text;
    if (a < 5) return "just now";
    if (a < 60) text = a + " s";
    else if (a < 3600) text = Math.round(a / 60) + " min";
    else if (a < 86400) text = Math.round(a / 3600) + " h";
    else text = Math.round(a / 86400) + " d";
    return s < 0 ? text + " ago" : "in " + text;
  }

  function clock(value) {
    const d = toDate(value);
    if (!d) return "";
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (sameDay) return time;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
  }

  function timeEl(value, text) {
    const d = toDate(value);
    return el("time", {
      datetime: d ? d.toISOString() : null,
      title: d ? d.toLocaleString() : null,
      text: text === undefined ? clock(value) : text,
    });
  }

  function names(list) {
    if (Array.isArray(list)) return list.join(", ");
    return list ? String(list) : "";
  }

  function debounce(key, ms, fn) {
    clearTimeout(S.timers[key]);
    S.timers[key] = setTimeout(fn, ms);
  }

  // ------------------------------------------------------------------ errors and the API

  function showError(text) {
    $("error-text").textContent = text;
    $("error").hidden = false;
    debounce("error", 10000, hideError);
  }

  function hideError() {
    $("error").hidden = true;
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new Error("cannot reach the console server: " + e.message);
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch (e) {
      doc = null;
    }
    if (!response.ok) {
      const text = doc && doc.error ? doc.error : response.status + " " + response.statusText;
      const err = new Error(text);
      err.status = response.status;
      throw err;
    }
    return doc || {};
  }

  function threadPath(id, rest) {
    return "/api/threads/" + encodeURIComponent(id) + (rest || "");
  }

  // ------------------------------------------------------------------ the thread list

  async function loadThreads() {
    const q = new URLSearchParams();
    const state = $("state-filter").value;
    if (state) q.set("state", state);
    if ($("show-archived").checked || state === "archived") q.set("archived", "1");
    const qs = q.toString();
    try {
      const doc = await api("GET", "/api/threads" + (qs ? "?" + qs : ""));
      S.threads = doc.threads || [];
      // The open thread is read up to what it shows, whatever a racing count said.
      const open = S.threads.find((t) => t.thread === S.current);
      if (open && S.last >= open.head) open.unread = 0;
      renderThreads();
    } catch (e) {
      showError(e.message);
    }
  }

  function renderThreads() {
    const list = $("threads");
    clear(list);
    $("no-threads").hidden = S.threads.length > 0;
    // mailslot's own bookkeeping (the file reservations) is listed apart, after every
    // conversation, without an unread count: it is a record, not something to catch up on.
    const talk = S.threads.filter((t) => !t.bookkeeping);
    const own = S.threads.filter((t) => t.bookkeeping);
    for (const t of talk.concat(own)) {
      if (t === own[0]) {
        list.append(el("li", { class: "thread-group muted small", "data-test": "bookkeeping-head",
          text: "kept by mailslot", role: "presentation" }));
      }
      const unread = t.bookkeeping ? 0 : t.unread || 0;
      const item = el("li", {
        "data-test": "thread-item",
        "data-thread": t.thread,
        "data-state": t.state,
        "data-unread": unread,
        "data-bookkeeping": t.bookkeeping ? "1" : null,
        class: "thread-item" + (t.thread === S.current ? " selected" : "") +
          (unread ? " has-unread" : "") + (t.bookkeeping ? " bookkeeping" : ""),
        "aria-current": t.thread === S.current ? "true" : null,
        tabindex: "0",
        role: "button",
      });
      const top = el("div", { class: "row" },
        el("span", { class: "badge state state-" + t.state, "data-test": "thread-state", text: t.state }),
        el("span", { class: "topic", "data-test": "thread-topic", text: t.topic || t.thread }),
        unread ? el("span", { class: "unread", "data-test": "unread", title: "unread", text: unread }) : null);
      const bottom = el("div", { class: "row muted small" },
        el("span", { "data-test": "thread-head", text: "#" + t.head }),
        timeEl(t.last_activity, relative(t.last_activity)),
        el("span", { class: "participants", "data-test": "participants", text: names(t.participants) }));
      item.append(top, bottom);
      item.addEventListener("click", () => openThread(t.thread));
      item.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          openThread(t.thread);
        }
      });
      list.append(item);
    }
  }

  function setUnread(id, n) {
    const t = S.threads.find((x) => x.thread === id);
    if (t && t.unread !== n) {
      t.unread = n;
      renderThreads();
    }
  }

  // ------------------------------------------------------------------ the transcript

  function stateLine(m) {
    const meta = m.meta || {};
    const line = el("div", { class: "event-line" }, timeEl(m.created_at),
      el("strong", { class: "sender", "data-test": "sender", text: m.from }),
      " moved the thread to ",
      el("span", { class: "badge state state-" + meta.state, text: meta.state || "?" }));
    if (meta.previous) line.append(el("span", { class: "muted", text: " (was " + meta.previous + ")" }));
    return line;
  }

  // A message's signature as the server checked it (m.signed; m.warning when it is invalid or
  // signed with a key this machine does not trust): a mark in its head and, for those two, the
  // warning in words under it.
  const SIGNED = {
    valid: ["✓ signed", "signed with a key this machine trusts for "],
    invalid: ["✗ invalid signature", ""],
    "unknown key": ["? unknown key", ""],
    unsigned: ["unsigned", "no signature: anyone who can write the folder could have posted this as "],
  };

  function signedKind(state) {
    return String(state).replace(/[^a-z]+/g, "-");
  }

  function signedMark(m) {
    const known = SIGNED[m.signed];
    if (!known || (m.type === "state" && m.signed === "unsigned")) return null; // a quiet line stays quiet
    return el("span", {
      class: "sig sig-" + signedKind(m.signed), "data-test": "signed", "data-signed": m.signed,
      title: m.warning || known[1] + m.from, text: known[0],
    });
  }

  function signedWarning(m) {
    if (!m.warning || !SIGNED[m.signed]) return null;
    return el("div", { class: "sig-warning sig-" + signedKind(m.signed), "data-test": "signed-warning",
      "data-signed": m.signed, text: "⚠ " + m.warning });
  }

  // Put the signature's mark and warning on a shown message as the server last gave them.
  function setSigned(node, m) {
    if (node.dataset.signed === (m.signed || "") && node.dataset.warning === (m.warning || "")) return;
    for (const k of Object.keys(SIGNED)) node.classList.remove("sig-" + signedKind(k));
    if (SIGNED[m.signed]) node.classList.add("sig-" + signedKind(m.signed));
    node.dataset.signed = m.signed || "";
    node.dataset.warning = m.warning || "";
    const head = node.querySelector(":scope > .message-head, :scope > .event-line");
    const mark = signedMark(m);
    const old = node.querySelector("[data-test=signed]");
    if (old && mark) old.replaceWith(mark);
    else if (old) old.remove();
    else if (mark && head) head.insertBefore(mark, head.querySelector(":scope > .seq")); // an event line: at its end
    const oldWarning = node.querySelector(":scope > [data-test=signed-warning]");
    const warning = signedWarning(m);
    if (oldWarning && warning) oldWarning.replaceWith(warning);
    else if (oldWarning) oldWarning.remove();
    else if (warning && head) head.after(warning);
    else if (warning) node.prepend(warning);
  }

  function renderMessage(m) {
    const isState = m.type === "state";
    const node = el("article", {
      "data-test": "message",
      "data-seq": m.seq,
      "data-type": m.type,
      "data-from": m.from,
      id: "m-" + m.seq,
      class: "message type-" + m.type + " priority-" + m.priority +
        (isState ? " event" : "") + (m.from === S.person ? " mine" : ""),
    });
    if (isState) {
      node.append(stateLine(m));
    } else {
      const head = el("header", { class: "message-head" },
        el("strong", { class: "sender", "data-test": "sender", text: m.from }));
      if (m.to && m.to.length) {
        head.append(el("span", { class: "to", "data-test": "to", text: "→ " + names(m.to) }));
      }
      if (m.type !== "message") {
        head.append(el("span", { class: "badge type type-" + m.type, "data-test": "type", text: m.type }));
      }
      if (m.priority && m.priority !== "normal") {
        head.append(el("span", {
          class: "badge priority priority-" + m.priority, "data-test": "priority", text: m.priority,
        }));
      }
      if (m.reply_to) {
        const link = el("a", {
          href: "#m-" + m.reply_to, class: "reply-link", "data-test": "reply-link",
          "data-to-seq": m.reply_to, text: "↩ #" + m.reply_to,
        });
        link.addEventListener("click", (ev) => {
          ev.preventDefault();
          jumpTo(m.reply_to);
        });
        head.append(link);
      }
      head.append(el("span", { class: "spacer" }));
      head.append(el("a", { href: "#m-" + m.seq, class: "seq muted", text: "#" + m.seq }));
      head.append(timeEl(m.created_at));
      const reply = el("button", { type: "button", class: "reply link", "data-test": "reply", text: "reply" });
      reply.addEventListener("click", () => setReplyTo(m));
      head.append(reply);
      node.append(head);
    }
    if (m.html) {
      const body = el("div", { class: "body", "data-test": "body" });
      body.innerHTML = m.html; // the server's safe Markdown rendering; nothing else uses innerHTML
      for (const a of body.querySelectorAll("a[href]")) {
        a.setAttribute("target", "_blank");
        a.setAttribute("rel", "noopener noreferrer");
      }
      node.append(body);
    }
    const meta = Object.assign({}, m.meta || {});
    if (isState) {
      delete meta.state;
      delete meta.previous;
    }
    if (Object.keys(meta).length) {
      node.append(el("details", { class: "meta" },
        el("summary", { text: "meta" }),
        el("pre", { text: JSON.stringify(meta, null, 2) })));
    }
    if (m.receipts) setReceipts(node, m.receipts);
    setSigned(node, m);
    return node;
  }

  // A message's receipts: how far each recipient has got with it, one quiet line.
  const RECEIPT = {
    stored: ["", "not yet"],
    reported: ["", "notified"],
    shown: ["✓ ", "read"],
    answered: ["✓ ", "answered"],
  };
  const RECEIPTS = new WeakMap(); // a shown message -> its receipts as the server last gave them

  function receiptsLine(list) {
    const line = el("div", { class: "receipts small", "data-test": "receipts" });
    list.forEach((r, i) => {
      const [mark, said] = RECEIPT[r.state] || ["", r.state];
      const at = toDate(r.at);
      if (i) line.append(el("span", { class: "sep", "aria-hidden": "true", text: " · " }));
      line.append(el("span", {
        class: "receipt receipt-" + r.state, "data-agent": r.agent, "data-state": r.state,
        title: r.agent + ": " + r.state + (at ? " at " + at.toLocaleString() : ""),
        text: mark + r.agent + " " + said + (at ? " " + relative(at) : ""),
      }));
    });
    return line;
  }

  // Put receipts under a shown message (replacing what was there), or none.
  function setReceipts(node, list) {
    RECEIPTS.set(node, list);
    const old = node.querySelector(":scope > [data-test=receipts]");
    const line = list && list.length ? receiptsLine(list) : null;
    if (old && line) old.replaceWith(line);
    else if (old) old.remove();
    else if (line) node.append(line);
  }

  // A shown message read again: its receipts, and its signature (a file changed since).
  function updateShown(m) {
    const node = shown(m.seq);
    if (!node) return;
    if (m.receipts) setReceipts(node, m.receipts);
    setSigned(node, m);
  }

  // Receipts move without new messages (a recipient's wait showed it one): the events stream
  // says when they may have; then, if the open thread shows one not yet answered, its last
  // page is read again for them.
  async function refreshReceipts() {
    const id = S.current;
    if (!id || document.visibilityState === "hidden") return;
    if (!messagesBox().querySelector("[data-test=receipts] [data-state]:not([data-state=answered])")) return;
    await enqueue(async () => {
      if (S.current !== id) return;
      const doc = await api("GET", threadPath(id, "?limit=" + PAGE));
      if (S.current === id) for (const m of doc.messages || []) updateShown(m);
    });
  }

  function messagesBox() {
    return $("messages");
  }

  function shown(seq) {
    return messagesBox().querySelector('[data-test=message][data-seq="' + seq + '"]');
  }

  function nearBottom() {
    const t = $("transcript");
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  function scrollToBottom() {
    const t = $("transcript");
    t.scrollTop = t.scrollHeight;
  }

  function renderHead() {
    const info = S.info;
    $("thread-topic").textContent = info ? info.topic || info.thread : "Pick a thread";
    const state = $("thread-state");
    state.hidden = !info;
    if (info) {
      state.textContent = info.state;
      state.className = "badge state state-" + info.state;
      $("thread-meta").textContent = info.thread + " · " + info.head + " messages · " +
        names(info.participants);
      $("new-state").value = info.state === "discuss" ? "implement" : info.state;
    } else {
      $("thread-meta").textContent = "";
    }
    const summary = $("thread-summary");
    summary.hidden = !(info && info.summary);
    summary.textContent = info && info.summary ? "Summary: " + info.summary : "";
  }

  function setEarlier(hasBefore) {
    S.hasBefore = hasBefore;
    $("load-earlier").hidden = !hasBefore;
  }

  async function openThread(id, opts) {
    opts = opts || {};
    if (S.current !== id) {
      S.current = id;
      S.info = null;
      S.first = 0;
      S.last = 0;
      S.loadingBefore = null;
      clear(messagesBox());
      setEarlier(false);
      setReplyTo(null);
      $("composer").hidden = false;
      $("state-form").hidden = false;
      document.body.classList.add("has-thread");
      if (location.hash !== "#" + encodeURIComponent(id)) {
        history.replaceState(null, "", "#" + encodeURIComponent(id));
      }
      renderThreads();
    }
    const done = enqueue(async () => {
      if (S.current !== id) return;
      const doc = await api("GET", threadPath(id, "?limit=" + PAGE));
      if (S.current !== id) return;
      S.info = doc.thread;
      renderHead();
      clear(messagesBox());
      const msgs = doc.messages || [];
      for (const m of msgs) messagesBox().append(renderMessage(m));
      S.first = msgs.length ? msgs[0].seq : 0;
      S.last = msgs.length ? msgs[msgs.length - 1].seq : 0;
      setEarlier(!!doc.has_before);
      scrollToBottom();
      await markRead();
    });
    try {
      await done;
      if (opts.seq) await jumpTo(opts.seq);
      else if (S.hasBefore) fillUp();
    } catch (e) {
      showError(e.message);
    }
  }

  function enqueue(fn) {
    const next = S.queue.then(fn, fn);
    S.queue = next.catch(() => undefined);
    return next;
  }

  async function markRead() {
    const id = S.current;
    const head = Math.max(S.last, S.info ? S.info.head || 0 : 0);
    if (!id || !head) return;
    await api("POST", threadPath(id, "/read"), { seq: head });
    setUnread(id, 0);
  }

  // Fetch what is newer than the last shown message of the open thread and append it.
  function fetchNew() {
    const id = S.current;
    return enqueue(async () => {
      if (!id || S.current !== id) return;
      const pages = [];
      let doc = await api("GET", threadPath(id, "?limit=" + PAGE));
      pages.unshift(doc.messages || []);
      // More than a page arrived since the last look: walk back until the pages meet.
      while (doc.has_before && pages[0].length && pages[0][0].seq > S.last + 1 && S.last > 0) {
        doc = await api("GET", threadPath(id, "?before=" + pages[0][0].seq + "&limit=" + PAGE));
        pages.unshift(doc.messages || []);
      }
      if (S.current !== id) return;
      S.info = Object.assign({}, S.info || {}, doc.thread || {});
      renderHead();
      if (!S.first && doc.has_before) setEarlier(true);
      const stick = nearBottom();
      let mine = false;
      for (const page of pages) {
        for (const m of page) {
          if (m.seq <= S.last || shown(m.seq)) {
            updateShown(m); // a reply moves a receipt to answered
            continue;
          }
          messagesBox().append(renderMessage(m));
          S.last = m.seq;
          if (!S.first) S.first = m.seq;
          if (m.from === S.person) mine = true;
        }
      }
      if (stick || mine) scrollToBottom();
      if (document.visibilityState !== "hidden") await markRead();
    });
  }

  // Load the page before the first shown message, keeping what is on screen in place.
  function loadBefore() {
    if (!S.current || !S.hasBefore || !S.first) return Promise.resolve();
    if (S.loadingBefore) return S.loadingBefore;
    const id = S.current;
    const p = enqueue(async () => {
      if (S.current !== id || !S.hasBefore) return;
      const doc = await api("GET", threadPath(id, "?before=" + S.first + "&limit=" + PAGE));
      if (S.current !== id) return;
      const t = $("transcript");
      const before = t.scrollHeight;
      const top = t.scrollTop;
      const frag = document.createDocumentFragment();
      const msgs = (doc.messages || []).filter((m) => m.seq < S.first && !shown(m.seq));
      for (const m of msgs) frag.append(renderMessage(m));
      messagesBox().prepend(frag);
      if (msgs.length) S.first = msgs[0].seq;
      setEarlier(!!doc.has_before && msgs.length > 0);
      t.scrollTop = top + (t.scrollHeight - before);
    })
      .catch((e) => showError(e.message))
      .finally(() => {
        if (S.loadingBefore === p) S.loadingBefore = null;
      });
    S.loadingBefore = p;
    return p;
  }

  // A short first page may not fill the transcript: then no scroll could ask for more.
  async function fillUp() {
    const t = $("transcript");
    while (S.hasBefore && t.scrollHeight <= t.clientHeight + 10) {
      const before = S.first;
      await loadBefore();
      if (S.first === before) break;
    }
  }

  async function jumpTo(seq) {
    seq = Number(seq);
    try {
      while (!shown(seq) && S.hasBefore && S.first > seq) {
        const before = S.first;
        await loadBefore();
        if (S.first === before) break;
      }
    } catch (e) {
      showError(e.message);
      return;
    }
    const node = shown(seq);
    if (!node) {
      showError("message #" + seq + " is not in this thread");
      return;
    }
    node.scrollIntoView({ block: "center" });
    node.classList.remove("flash");
    void node.offsetWidth; // restart the highlight
    node.classList.add("flash");
  }

  // ------------------------------------------------------------------ the composer

  function setReplyTo(m) {
    S.replyTo = m ? m.seq : null;
    $("reply-to").hidden = !m;
    $("reply-to-link").textContent = m ? "#" + m.seq + " from " + m.from : "";
    if (m) {
      const to = $("to");
      if (!to.value.trim() && m.from !== S.person) to.value = m.from;
      $("content").focus();
    }
  }

  async function send(ev) {
    ev.preventDefault();
    if (!S.current) return;
    const content = $("content").value;
    if (!content.trim()) {
      showError("write something first");
      return;
    }
    const to = $("to").value.split(",").map((s) => s.trim()).filter(Boolean);
    const button = $("send");
    button.disabled = true;
    try {
      await api("POST", threadPath(S.current, "/messages"), {
        content,
        type: $("type").value,
        priority: $("priority").value,
        to,
        reply_to: S.replyTo,
      });
      $("content").value = "";
      $("to").value = "";
      $("type").value = "message";
      $("priority").value = "normal";
      setReplyTo(null);
      hideError();
      await fetchNew();
      scrollToBottom();
    } catch (e) {
      showError(e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function changeState(ev) {
    ev.preventDefault();
    if (!S.current) return;
    const button = $("set-state");
    button.disabled = true;
    try {
      await api("POST", threadPath(S.current, "/state"), {
        state: $("new-state").value,
        summary: $("state-summary").value || null,
      });
      $("state-summary").value = "";
      hideError();
      await fetchNew();
      scrollToBottom();
      loadThreads();
    } catch (e) {
      showError(e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function createThread(ev) {
    ev.preventDefault();
    const topic = $("new-topic").value.trim();
    if (!topic) return;
    try {
      const doc = await api("POST", "/api/threads", { topic });
      $("new-topic").value = "";
      await loadThreads();
      await openThread(doc.thread);
    } catch (e) {
      showError(e.message);
    }
  }

  // ------------------------------------------------------------------ search

  function snippet(text) {
    // The server marks matches as «match»: build <mark> elements, never parse HTML.
    const out = el("span", { class: "snippet", "data-test": "snippet" });
    let marked = false;
    for (const part of String(text || "").split(/([«»])/)) {
      if (part === "«") marked = true;
      else if (part === "»") marked = false;
      else if (part) out.append(marked ? el("mark", { text: part }) : document.createTextNode(part));
    }
    return out;
  }

  async function search(ev) {
    ev.preventDefault();
    const q = $("search").value.trim();
    if (!q) {
      closeSearch();
      return;
    }
    const params = new URLSearchParams({ q });
    if ($("search-this-thread").checked && S.current) params.set("thread", S.current);
    try {
      const doc = await api("GET", "/api/search?" + params.toString());
      renderHits(q, doc);
    } catch (e) {
      showError(e.message);
    }
  }

  function renderHits(q, doc) {
    const hits = doc.hits || [];
    const list = $("search-hits");
    clear(list);
    const total = doc.total === undefined ? hits.length : doc.total;
    $("search-summary").textContent = total + (total === 1 ? " hit" : " hits") + " for “" + q + "”" +
      (total > hits.length ? " (showing " + hits.length + ")" : "");
    for (const h of hits) {
      const item = el("li", {
        class: "hit", "data-test": "search-hit", "data-thread": h.thread, "data-seq": h.seq,
        tabindex: "0", role: "button",
      },
        el("div", { class: "row small muted" },
          el("span", { text: h.thread + " #" + h.seq }),
          el("strong", { text: h.from }),
          h.type && h.type !== "message" ? el("span", { class: "badge type", text: h.type }) : null,
          timeEl(h.created_at, relative(h.created_at))),
        snippet(h.snippet));
      const go = () => openThread(h.thread, { seq: h.seq });
      item.addEventListener("click", go);
      item.addEventListener("keydown", (e) => {
        if (e.key === "Enter") go();
      });
      list.append(item);
    }
    $("search-results").hidden = false;
    $("threads").hidden = true; // the results use the panel's height; Close gives it back
  }

  function closeSearch() {
    $("search-results").hidden = true;
    $("threads").hidden = false;
    clear($("search-hits"));
  }

  // ------------------------------------------------------------------ agents, tasks, reservations

  function statusText(a) {
    if (a.status === "waiting") {
      const on = names(a.waiting_on);
      return on ? "waiting on " + on : "waiting";
    }
    return a.status || "offline";
  }

  function renderAgents(list) {
    if (list) S.agents = list;
    const box = $("agents");
    clear(box);
    $("no-agents").hidden = S.agents.length > 0;
    const order = { online: 0, waiting: 1, idle: 2, offline: 3 };
    const agents = S.agents.slice().sort((a, b) =>
      (order[a.status] ?? 4) - (order[b.status] ?? 4) || String(a.agent).localeCompare(b.agent));
    for (const a of agents) {
      const status = a.status || "offline";
      const item = el("li", {
        class: "agent status-" + status, "data-test": "agent", "data-name": a.agent,
        "data-status": status,
      },
        el("div", { class: "row" },
          el("span", { class: "dot", "aria-hidden": "true" }),
          el("strong", { class: "name", text: a.agent }),
          el("span", { class: "status", "data-test": "agent-status", title: statusText(a), text: statusText(a) })),
        el("div", { class: "row small muted" },
          a.model ? el("span", { class: "model", "data-test": "agent-model", text: a.model }) : null,
          a.client ? el("span", { text: a.client }) : null,
          status !== "online" && status !== "waiting" && a.last_seen
            ? el("span", {}, "last seen ", timeEl(a.last_seen, relative(a.last_seen)))
            : a.since ? el("span", {}, "since ", timeEl(a.since, relative(a.since))) : null));
      if (a.description) item.append(el("div", { class: "small description", text: a.description }));
      box.append(item);
    }
  }

  async function loadAgents() {
    try {
      const doc = await api("GET", "/api/agents");
      renderAgents(doc.agents || []);
    } catch (e) {
      showError(e.message);
    }
  }

  function threadLink(thread, seq) {
    const a = el("a", { href: "#" + encodeURIComponent(thread), class: "thread-link", text: thread + " #" + seq });
    a.addEventListener("click", (ev) => {
      ev.preventDefault();
      openThread(thread, { seq });
    });
    return a;
  }

  async function loadTasks() {
    let doc;
    try {
      doc = await api("GET", "/api/tasks");
    } catch (e) {
      showError(e.message);
      return;
    }
    const tasks = doc.tasks || [];
    const box = $("tasks");
    clear(box);
    const counts = doc.counts || {};
    const parts = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => n + " " + k);
    $("task-counts").textContent = parts.length ? parts.join(" · ") : tasks.length ? "" : "No tasks.";
    const open = tasks.filter((t) => t.status === "open" || t.status === "claimed").length;
    $("tasks-count").textContent = open ? String(open) : "";
    for (const t of tasks) {
      const status = t.status || "open";
      const item = el("li", { class: "task status-" + status, "data-test": "task", "data-status": status,
        "data-thread": t.thread, "data-seq": t.seq },
        el("div", { class: "row" },
          el("span", { class: "badge task-status status-" + status, text: status }),
          el("span", { class: "title", "data-test": "task-title", text: t.title || "(untitled)" })),
        el("div", { class: "row small muted" },
          threadLink(t.thread, t.seq),
          el("span", { text: "from " + t.from })));
      const extra = el("div", { class: "small muted" });
      if (t.holder) {
        extra.append("claimed by ", el("strong", { "data-test": "task-holder", text: t.holder }));
        if (t.until) extra.append(" until ", timeEl(t.until, clock(t.until) + " (" + relative(t.until) + ")"));
      }
      const sep = () => (extra.childNodes.length ? " · " : "");
      if (t.attempts) extra.append(sep() + t.attempts + (t.attempts === 1 ? " attempt" : " attempts"));
      if (t.failed) extra.append(sep() + t.failed + " failed");
      if (typeof t.result === "number") {
        const link = threadLink(t.thread, t.result);
        link.textContent = "result #" + t.result;
        extra.append(sep(), link);
      }
      if (extra.childNodes.length) item.append(extra);
      const actions = taskActions(t, status);
      if (actions.childNodes.length) item.append(actions);
      box.append(item);
    }
    const questions = doc.questions || [];
    const qbox = $("questions");
    clear(qbox);
    $("questions-head").hidden = questions.length === 0;
    for (const q of questions) {
      const text = q.title || q.question || q.content || q.snippet || "";
      qbox.append(el("li", { class: "task question", "data-test": "question" },
        el("div", { class: "row" }, el("span", { class: "badge type", text: "question" }),
          el("span", { class: "title", text: text || "(question)" })),
        el("div", { class: "row small muted" },
          q.thread ? threadLink(q.thread, q.seq) : null,
          q.from ? el("span", { text: "from " + q.from }) : null,
          q.to && q.to.length ? el("span", { text: "to " + names(q.to) }) : null)));
    }
  }

  // What the person may do with a task, as themselves (the transcript records it as theirs):
  // take an open one, give back their own, reopen one someone else holds.
  function taskActions(t, status) {
    const row = el("div", { class: "row actions" });
    const mayTake = !t.to || !t.to.length || t.to.includes(S.person);
    const act = (action, label, title) => {
      const b = el("button", { type: "button", class: "small-button", "data-test": "task-" + action,
        title, text: label });
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          await api("POST", "/api/tasks/" + encodeURIComponent(t.thread) + "/" + t.seq, { action });
          hideError();
        } catch (e) {
          showError(e.message);
        } finally {
          b.disabled = false;
          loadTasks();
        }
      });
      row.append(b);
    };
    if (status === "open" && mayTake) act("claim", "Claim", "take it as " + S.person);
    if (status === "claimed" && t.holder === S.person) act("release", "Give back", "open it again");
    if (status === "claimed" && t.holder !== S.person) {
      act("reopen", "Reopen", "take it back from " + t.holder + " (recorded as done by " + S.person + ")");
    }
    return row;
  }

  async function loadReservations() {
    let doc;
    try {
      doc = await api("GET", "/api/reservations");
    } catch (e) {
      showError(e.message);
      return;
    }
    const list = doc.reservations || [];
    const box = $("reservations");
    clear(box);
    $("no-reservations").hidden = list.length > 0;
    $("reservations-count").textContent = list.length ? String(list.length) : "";
    for (const r of list) {
      const kind = r.exclusive ? "exclusive" : "shared";
      const item = el("li", { class: "reservation", "data-test": "reservation", "data-path": r.path,
        "data-holder": r.holder },
        el("div", { class: "row" },
          el("code", { class: "path", "data-test": "reservation-path", text: r.path }),
          el("span", { class: "badge kind-" + kind, text: kind })),
        el("div", { class: "row small muted" },
          el("strong", { "data-test": "reservation-holder", text: r.holder }),
          r.since ? el("span", {}, "since ", timeEl(r.since, relative(r.since))) : null,
          r.until ? el("span", {}, "until ", timeEl(r.until, clock(r.until) + " (" + relative(r.until) + ")")) : null));
      if (r.reason) item.append(el("div", { class: "small reason", text: r.reason }));
      const mine = r.holder === S.person;
      const free = el("button", { type: "button", class: "small-button", "data-test": "reservation-free",
        title: mine ? "give it back" : "free it (recorded as freed by " + S.person + ", naming " + r.holder + ")",
        text: mine ? "Release" : "Free" });
      free.addEventListener("click", async () => {
        free.disabled = true;
        try {
          await api("POST", "/api/reservations/release", { holder: r.holder, path: r.path });
          hideError();
        } catch (e) {
          showError(e.message);
        } finally {
          loadReservations();
        }
      });
      item.append(el("div", { class: "row actions" }, free));
      box.append(item);
    }
  }

  function refreshSide() {
    if (S.tab === "tasks-panel") loadTasks();
    else if (S.tab === "reservations-panel") loadReservations();
  }

  function showTab(panel) {
    S.tab = panel;
    for (const tab of document.querySelectorAll(".tab")) {
      const on = tab.dataset.panel === panel;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      $(tab.dataset.panel).hidden = !on;
    }
    refreshSide();
  }

  // ------------------------------------------------------------------ live events

  function setLive(status, text) {
    const live = $("live");
    live.dataset.status = status;
    live.textContent = text;
  }

  function connect() {
    const events = new EventSource("/api/events");
    events.addEventListener("open", () => {
      const again = S.connected === null; // reconnected after a drop: catch up on what was missed
      S.connected = true;
      setLive("live", "live");
      if (again) {
        loadThreads();
        loadAgents();
        if (S.current) fetchNew().catch((e) => showError(e.message));
        refreshSide();
      }
    });
    events.addEventListener("error", () => {
      if (S.connected) S.connected = null;
      setLive("down", events.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
    });
    events.addEventListener("message", (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (data.thread === S.current) {
        fetchNew().catch((e) => showError(e.message));
      } else {
        const t = S.threads.find((x) => x.thread === data.thread);
        if (t && data.seq > (t.head || 0)) {
          if (data.from !== S.person) t.unread = (t.unread || 0) + 1; // one's own is not news
          t.head = data.seq;
        }
        renderThreads();
      }
      // The list (order, heads, states, new threads) and side panels follow shortly after.
      debounce("threads", 250, loadThreads);
      debounce("side", 400, refreshSide);
    });
    events.addEventListener("receipts", () => {
      debounce("receipts", 200, () => refreshReceipts().catch((e) => showError(e.message)));
    });
    events.addEventListener("presence", (ev) => {
      try {
        const data = JSON.parse(ev.data);
        renderAgents(data.agents || []);
      } catch (e) {
        /* a malformed event changes nothing */
      }
    });
    return events;
  }

  // ------------------------------------------------------------------ start

  async function start() {
    $("error-close").addEventListener("click", hideError);
    $("state-filter").addEventListener("change", loadThreads);
    $("show-archived").addEventListener("change", loadThreads);
    $("new-thread").addEventListener("submit", createThread);
    $("composer").addEventListener("submit", send);
    $("state-form").addEventListener("submit", changeState);
    $("content").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) send(ev);
    });
    $("reply-clear").addEventListener("click", () => setReplyTo(null));
    $("reply-to-link").addEventListener("click", (ev) => {
      ev.preventDefault();
      if (S.replyTo) jumpTo(S.replyTo);
    });
    $("search-form").addEventListener("submit", search);
    $("search-close").addEventListener("click", () => {
      $("search").value = "";
      closeSearch();
    });
    $("search").addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        $("search").value = "";
        closeSearch();
      }
    });
    $("load-earlier").addEventListener("click", () => loadBefore());
    $("transcript").addEventListener("scroll", () => {
      if ($("transcript").scrollTop < 60 && S.hasBefore) loadBefore();
    });
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => showTab(tab.dataset.panel));
    }
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && S.current) markRead().catch(() => undefined);
    });
    // Relative times ("3 min ago") age without new data: re-render them from what we have.
    setInterval(() => {
      renderThreads();
      renderAgents();
      for (const node of messagesBox().querySelectorAll("[data-test=message]")) {
        if (RECEIPTS.has(node)) setReceipts(node, RECEIPTS.get(node));
      }
    }, 30000);

    try {
      const me = await api("GET", "/api/me");
      S.person = me.person || "";
      $("person").textContent = S.person;
      $("root").textContent = me.root || "";
      document.title = "mailslot · " + (me.root || "");
    } catch (e) {
      showError(e.message);
    }
    connect();
    await Promise.all([loadThreads(), loadAgents()]);
    const wanted = decodeURIComponent(location.hash.slice(1));
    const pick = S.threads.find((t) => t.thread === wanted) || S.threads.find((t) => !t.bookkeeping);
    if (pick && !S.current) await openThread(pick.thread);
    document.body.dataset.ready = "1";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
