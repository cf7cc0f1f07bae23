// A crash-game round (seed 002) played through the daemon with the TypeScript client: the bet
// lock, the player's fairness record, the round's hazards, the game session stepped and
// finished, the settlement; then `botfleet verify`, the command line, reproduces the round's
// hazards from the revealed seed, as a player checking the game would.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";

import { NotFoundError, type GameSession } from "../src/index.js";
import { client, skip, unique } from "./support.js";

const DIFFICULTY = "EASY";

test("a crash-game round settles and botfleet verify reproduces its hazards", { skip }, async () => {
  const c = client();
  const bin = process.env.BOTFLEET_BIN;
  assert.ok(bin, "BOTFLEET_BIN (the built botfleet binary) is not set");
  const user = unique("user");
  const agent = "agent456";

  const played = await c.withLock(`bet-lock:${user}-${agent}`, 30_000, async (fence) => {
    assert.ok(fence > 0);
    const fairness = await c.fairnessStart(user, agent, "player-chosen-seed");
    assert.equal(fairness.userSeed, "player-chosen-seed");
    const round = await c.fairnessRound(user, agent, DIFFICULTY);
    assert.equal(round.hashedServerSeed, fairness.hashedServerSeed, "the round must use the committed seed");
    assert.ok(round.hazards.length > 0);
    const session: Partial<GameSession> = {
      userId: user,
      agentId: agent,
      currency: "INR",
      difficulty: DIFFICULTY,
      userSeed: round.userSeed,
      hashedServerSeed: round.hashedServerSeed,
      nonce: round.nonce,
      coefficients: ["1.01", "1.03", "1.06", "1.10"],
      currentStep: 0,
      betAmount: 10,
      winAmount: 0,
      isActive: true,
      isWin: false,
      createdAt: new Date().toISOString(),
      platformBetTxId: unique("tx"),
      roundId: unique("round"),
      collisionColumns: round.hazards,
    };
    await c.putGameSession(user, agent, session);
    // Step until the next column is a hazard (or four steps), then cash out.
    let step = 0;
    while (step < 4 && !round.hazards.includes(step + 1)) {
      step++;
      const updated = await c.updateGameSession(user, agent, {}, { currentStep: 1, winAmount: 0.1 });
      assert.equal(updated.currentStep, step);
    }
    const settled = await c.fairnessSettle(user, agent, "player-next-seed");
    const finished = await c.updateGameSession(user, agent, { isActive: false, isWin: step > 0, serverSeed: settled.serverSeed });
    assert.equal(finished.isActive, false);
    assert.equal(finished.collisionColumns.length, round.hazards.length);
    return { round, settled };
  });

  const { round, settled } = played;
  assert.equal(settled.hashedServerSeed, round.hashedServerSeed);
  assert.equal(createHash("sha256").update(settled.serverSeed).digest("hex"), round.hashedServerSeed, "the revealed seed must hash to the commitment");
  assert.equal(settled.nonce, round.nonce);
  assert.equal(settled.next.userSeed, "player-next-seed");
  assert.notEqual(settled.next.hashedServerSeed, round.hashedServerSeed, "the seed must rotate");

  const out = execFileSync(
    bin,
    ["verify", "--server-seed", settled.serverSeed, "--client-seed", settled.userSeed, "--nonce", String(settled.nonce), "--difficulty", DIFFICULTY, "--json"],
    { encoding: "utf8" },
  );
  const verified = JSON.parse(out) as { hazards: number[]; hashedServerSeed: string };
  assert.deepEqual(verified.hazards, round.hazards, "botfleet verify must reproduce the round's hazards");
  assert.equal(verified.hashedServerSeed, round.hashedServerSeed);
  assert.deepEqual(await c.fairnessVerify(settled.serverSeed, settled.userSeed, settled.nonce, DIFFICULTY), round.hazards);

  assert.equal(await c.deleteGameSession(user, agent), true);
  await assert.rejects(c.getGameSession(user, agent), NotFoundError);
});
