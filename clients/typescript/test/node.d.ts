// The few Node built-ins the tests use, declared by hand: the package's only development
// dependency is TypeScript itself.

declare module "node:test" {
  interface TestContext {
    skip(message?: string): void;
    diagnostic(message: string): void;
  }
  interface TestOptions {
    skip?: boolean | string;
    timeout?: number;
  }
  type TestFn = (t: TestContext) => void | Promise<void>;
  export function test(name: string, fn: TestFn): Promise<void>;
  export function test(name: string, options: TestOptions, fn: TestFn): Promise<void>;
  export function before(fn: () => void | Promise<void>): void;
  export function after(fn: () => void | Promise<void>): void;
}

declare module "node:assert/strict" {
  interface Assert {
    (value: unknown, message?: string): asserts value;
    ok(value: unknown, message?: string): asserts value;
    equal<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    notEqual(actual: unknown, expected: unknown, message?: string): void;
    deepEqual<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    match(value: string, pattern: RegExp, message?: string): void;
    rejects(
      block: Promise<unknown> | (() => Promise<unknown>),
      expected?: ((e: unknown) => boolean) | (new (...args: never[]) => unknown) | RegExp | object,
      message?: string,
    ): Promise<void>;
    throws(block: () => unknown, expected?: (new (...args: never[]) => unknown) | RegExp | object, message?: string): void;
    fail(message?: string): never;
  }
  const assert: Assert;
  export default assert;
}

declare module "node:child_process" {
  export function execFileSync(
    file: string,
    args: string[],
    options?: { encoding: "utf8"; cwd?: string; env?: Record<string, string | undefined> },
  ): string;
}

declare module "node:crypto" {
  interface Hash {
    update(data: string): Hash;
    digest(encoding: "hex"): string;
  }
  export function createHash(algorithm: string): Hash;
  export function randomUUID(): string;
}

declare const process: {
  env: Record<string, string | undefined>;
  pid: number;
};
