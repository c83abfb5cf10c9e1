// Compile contracts/StrongroomUSD.sol with solcjs (the npm package `solc`).
//
//   node contracts/compile.js          write contracts/StrongroomUSD.json
//   node contracts/compile.js --print  print the artifact to stdout (used by the test)
//
// The compiler input is fixed here (version pinned by package-lock.json,
// optimizer on, evmVersion paris so py-evm and anvil both run it, no metadata
// hash), so recompiling the committed source must reproduce the committed
// bytecode byte for byte.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const SOURCE = "StrongroomUSD.sol";
const CONTRACT = "StrongroomUSD";

function compile() {
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: fs.readFileSync(path.join(__dirname, SOURCE), "utf8") } },
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "paris",
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  }
  const unit = output.contracts[SOURCE][CONTRACT];
  return {
    contractName: CONTRACT,
    sourceName: SOURCE,
    compiler: "solc-js " + solc.version(),
    settings: input.settings,
    abi: unit.abi,
    bytecode: "0x" + unit.evm.bytecode.object,
    deployedBytecode: "0x" + unit.evm.deployedBytecode.object,
  };
}

const artifact = JSON.stringify(compile(), null, 2) + "\n";
if (process.argv.includes("--print")) {
  process.stdout.write(artifact);
} else {
  fs.writeFileSync(path.join(__dirname, CONTRACT + ".json"), artifact);
}
