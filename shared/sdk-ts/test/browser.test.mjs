// The web chat page in a real browser (Chromium driven by playwright-core, no browser
// download: ANCHORAGE_CHROMIUM or /usr/bin/chromium): two people chat across two edges, one
// goes offline and comes back with nothing lost. A screenshot is kept in test-results/.
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { startStack } from "./stack.mjs";

const CHROMIUM = process.env.ANCHORAGE_CHROMIUM ?? "/usr/bin/chromium";
const RESULTS = fileURLToPath(new URL("../test-results", import.meta.url));

let stack;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (set ANCHORAGE_CHROMIUM)`);
  stack = await startStack({ extraEdges: 1 });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function signIn(context, edge, user) {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  await page.goto(stack.http(edge));
  await page.fill("#signin [name=user]", user);
  await page.click("#signin button");
  await page.getByTestId("status").getByText("online").waitFor();
  return { page, problems };
}

const messageBodies = (page) => page.locator("#messages li:not(.pending) .body").allTextContents();

test("two browsers chat across two edges; one goes offline and comes back with nothing lost", { timeout: 120_000 }, async () => {
  const aliceContext = await browser.newContext();
  const bobContext = await browser.newContext();
  const alice = await signIn(aliceContext, 0, "alice");
  const bob = await signIn(bobContext, 1, "bob");

  // Alice creates a group with bob and says hello.
  await alice.page.fill("#new-group [name=group]", "web");
  await alice.page.fill("#new-group [name=title]", "Web");
  await alice.page.fill("#new-group [name=members]", "bob, carol");
  await alice.page.click("#new-group button");
  await alice.page.getByTestId("members").getByText("(3)").waitFor();
  await alice.page.fill("#compose [name=text]", "hello from edge one");
  await alice.page.press("#compose [name=text]", "Enter");

  // Bob sees the conversation with one unread message, opens it: read, and live from then on.
  const bobItem = bob.page.locator('#conversations li[data-conv="web"]');
  await bobItem.getByTestId("unread").getByText("1").waitFor();
  await bobItem.click();
  await bob.page.locator("#messages li .body", { hasText: "hello from edge one" }).waitFor();
  await bobItem.getByTestId("unread").waitFor({ state: "detached" });
  await bob.page.fill("#compose [name=text]", "hi from edge two");
  await bob.page.press("#compose [name=text]", "Enter");
  await alice.page.locator("#messages li .body", { hasText: "hi from edge two" }).waitFor();

  // Bob goes offline: he writes three messages meanwhile, alice writes three.
  await bobContext.setOffline(true);
  await bob.page.evaluate(() => window.anchorage.cut());
  await bob.page.getByTestId("status").getByText("offline").waitFor();
  for (const text of ["b1", "b2", "b3"]) {
    await bob.page.fill("#compose [name=text]", text);
    await bob.page.press("#compose [name=text]", "Enter");
  }
  await bob.page.locator("#messages li.pending").nth(2).waitFor();
  for (const text of ["a1", "a2", "a3"]) {
    await alice.page.fill("#compose [name=text]", text);
    await alice.page.press("#compose [name=text]", "Enter");
  }
  await alice.page.locator("#messages li .body", { hasText: "a3" }).waitFor();

  // Back online: bob's messages go out in the order written, alice's come in.
  await bobContext.setOffline(false);
  await bob.page.getByTestId("status").getByText("online").waitFor({ timeout: 30_000 });
  await bob.page.locator("#messages li.pending").first().waitFor({ state: "detached", timeout: 30_000 });
  const expectWords = ["hello from edge one", "hi from edge two", "a1", "a2", "a3", "b1", "b2", "b3"];
  for (const page of [alice.page, bob.page]) {
    await page.locator("#messages li:not(.pending) .body", { hasText: "b3" }).waitFor();
    await page.locator("#messages li:not(.pending) .body", { hasText: "a3" }).waitFor();
    const bodies = await messageBodies(page);
    assert.deepEqual([...bodies].sort(), [...expectWords].sort(), "each message once");
    assert.deepEqual(bodies.filter((b) => /^b\d$/.test(b)), ["b1", "b2", "b3"], "bob's in the order written");
    assert.deepEqual(bodies.filter((b) => /^a\d$/.test(b)), ["a1", "a2", "a3"], "alice's in the order written");
  }
  // Both show the same order: the server's.
  assert.deepEqual(await messageBodies(alice.page), await messageBodies(bob.page));

  // A reload starts from the local store (IndexedDB): the messages are there before any sync.
  await bob.page.reload();
  await bob.page.fill("#signin [name=user]", "bob");
  await bob.page.click("#signin button");
  await bob.page.locator('#conversations li[data-conv="web"]').click();
  await bob.page.locator("#messages li .body", { hasText: "b3" }).waitFor();

  // Bob adds dave; everyone's member list follows.
  await bob.page.fill("#add-members [name=members]", "dave");
  await bob.page.click("#add-members button");
  await bob.page.locator("#error").getByText("forbidden", { exact: false }).waitFor();
  await alice.page.fill("#add-members [name=members]", "dave");
  await alice.page.click("#add-members button");
  await alice.page.getByTestId("members").getByText("(4)").waitFor();

  mkdirSync(RESULTS, { recursive: true });
  await alice.page.screenshot({ path: join(RESULTS, "chat-page.png"), fullPage: true });
  assert.deepEqual(alice.problems, []);
  assert.deepEqual(bob.problems.filter((p) => !/ERR_INTERNET_DISCONNECTED|WebSocket|Failed to load resource/.test(p)), []);
});

test("a large group's member list loads lazily, a page at a time", { timeout: 120_000 }, async () => {
  const context = await browser.newContext();
  const { page, problems } = await signIn(context, 0, "olga");
  const members = Array.from({ length: 180 }, (_, i) => `m${String(i).padStart(3, "0")}`);
  await page.evaluate(async (members) => {
    await window.anchorage.createGroup("crowd", "Crowd", members.slice(0, 100));
    await window.anchorage.addMembers("crowd", members.slice(100));
  }, members);
  await page.locator('#conversations li[data-conv="crowd"]').click();
  await page.getByTestId("members").getByText("(181)").waitFor();
  assert.equal(await page.locator("#member-list li").count(), 50);
  await page.click("#more-members");
  assert.equal(await page.locator("#member-list li").count(), 100);
  await page.click("#more-members");
  await page.click("#more-members");
  assert.equal(await page.locator("#member-list li").count(), 181);
  assert.ok(await page.locator("#more-members").isHidden());
  assert.deepEqual(problems, []);
});
