// A stand-in for Flamenco 3's job-compiler engine, for tests: runs a job-type script the way
// the Manager does (internal/manager/job_compilers: goja, strict mode, the globals below and
// nothing else — no require, no console, no Node modules) and prints what it authored.
//
//   node flamenco_harness.js SCRIPT.js JOB.json
//
// JOB.json: {"name": ..., "created": ISO time, "settings": {...}} — the settings the
// Flamenco add-on would submit; the job type's defaults fill the missing ones, as the
// add-on's property group does. Prints one JSON object: {"ok": true, "jobType": ...,
// "settings": ..., "tasks": [{name, type, priority, commands: [{name, parameters,
// totalStepCount}], dependencies: [task names]}], "printed": [...]} or {"ok": false,
// "error": "..."} when compileJob threw (what the artist would see at submission).
"use strict";

const fs = require("fs");
const nodePath = require("path");
const vm = require("vm");

const SETTING_TYPES = { string: "string", int32: "number", float: "number", bool: "boolean" };

function fail(message) {
    throw new Error(message);
}

// author.go: Task(name, type) trims both and refuses empty ones; Command(name, params, steps).
function makeAuthor() {
    return {
        Task: function (name, type) {
            name = String(name === undefined ? "" : name).trim();
            type = String(type === undefined ? "" : type).trim();
            if (!name) fail("author.Task(name, type): name is required");
            if (!type) fail("author.Task(name, type): type is required");
            const task = { name: name, type: type, priority: 50, commands: [], dependencies: [] };
            task.addCommand = function (command) {
                if (!command || command.__command !== true) fail("task.addCommand: not an author.Command");
                task.commands.push(command);
            };
            task.addDependency = function (dep) {
                if (!dep || !Array.isArray(dep.commands)) fail("task.addDependency: not an author.Task");
                task.dependencies.push(dep);
            };
            return task;
        },
        Command: function (name, parameters, totalStepCount) {
            // The worker reads blender-render's argsBefore/args as lists of strings and the
            // rest as strings (internal/worker/command_blender.go): anything else fails there.
            if (name === "blender-render") {
                ["exe", "exeArgs", "blendfile"].forEach(function (key) {
                    if (key in parameters && typeof parameters[key] !== "string") {
                        fail("blender-render: " + key + " must be a string");
                    }
                });
                if (!parameters.exe) fail("blender-render: exe is required");
                ["argsBefore", "args"].forEach(function (key) {
                    const list = parameters[key];
                    if (!Array.isArray(list) || list.some(function (v) { return typeof v !== "string"; })) {
                        fail("blender-render: " + key + " must be a list of strings, got " + JSON.stringify(list));
                    }
                });
            }
            return { __command: true, name: name, parameters: parameters, totalStepCount: totalStepCount || 0 };
        },
    };
}

// js_path.go wraps crosspath: forward slashes, Go's path semantics.
function slash(p) { return String(p).replace(/\\/g, "/"); }
const flamencoPath = {
    basename: function (p) { return nodePath.posix.basename(slash(p)); },
    dirname: function (p) { return nodePath.posix.dirname(slash(p)); },
    join: function () {
        const parts = Array.prototype.slice.call(arguments).map(slash).filter(function (p) { return p !== ""; });
        return parts.length ? nodePath.posix.normalize(parts.join("/")).replace(/(.)\/$/, "$1") : "";
    },
    stem: function (p) {
        const base = nodePath.posix.basename(slash(p));
        const ext = nodePath.posix.extname(base);
        return ext ? base.slice(0, -ext.length) : base;
    },
};

function two(n) { return (n < 10 ? "0" : "") + n; }
function formatTimestampLocal(date) {  // Go: "2006-01-02_150405", local time
    return date.getFullYear() + "-" + two(date.getMonth() + 1) + "-" + two(date.getDate()) + "_" +
        two(date.getHours()) + two(date.getMinutes()) + two(date.getSeconds());
}

function checkJobType(jobType) {
    if (!jobType || typeof jobType.label !== "string" || !Array.isArray(jobType.settings)) {
        fail("JOB_TYPE needs a label and a list of settings");
    }
    const keys = {};
    jobType.settings.forEach(function (s) {
        if (!s.key || !(s.type in SETTING_TYPES)) fail("setting " + JSON.stringify(s) + ": key and a known type");
        if (keys[s.key]) fail("setting " + s.key + " twice");
        keys[s.key] = true;
        if ("default" in s && typeof s.default !== SETTING_TYPES[s.type]) fail("setting " + s.key + ": default type");
        if (s.choices) {
            if (s.type !== "string") fail("setting " + s.key + ": choices on a non-string");
            if ("default" in s && s.choices.indexOf(s.default) < 0) fail("setting " + s.key + ": default not a choice");
        }
        if ("eval" in s && typeof s.eval !== "string") fail("setting " + s.key + ": eval must be a Python string");
    });
}

function main(scriptFile, jobFile) {
    const printed = [];
    const context = vm.createContext({
        author: makeAuthor(),
        path: flamencoPath,
        print: function () { printed.push(Array.prototype.slice.call(arguments).map(String).join(" ")); },
        alert: function () { printed.push("ALERT " + Array.prototype.slice.call(arguments).join(" ")); },
        formatTimestampLocal: formatTimestampLocal,
    });
    // goja.Compile(filename, source, strict=true)
    vm.runInContext('"use strict";\n' + fs.readFileSync(scriptFile, "utf8"), context, { filename: scriptFile });
    const jobType = vm.runInContext("typeof JOB_TYPE === 'undefined' ? undefined : JOB_TYPE", context);
    checkJobType(jobType);
    if (vm.runInContext("typeof compileJob", context) !== "function") fail("no compileJob(job) function");

    const submitted = JSON.parse(fs.readFileSync(jobFile, "utf8"));
    const settings = {};
    jobType.settings.forEach(function (s) { if ("default" in s) settings[s.key] = s.default; });
    Object.keys(submitted.settings || {}).forEach(function (k) { settings[k] = submitted.settings[k]; });
    jobType.settings.forEach(function (s) {
        if (s.required && (settings[s.key] === undefined || settings[s.key] === "")) {
            fail("required setting " + s.key + " missing");
        }
    });
    const tasks = [];
    const job = {
        name: submitted.name, jobType: nodePath.basename(scriptFile, ".js").replace(/_/g, "-"),
        priority: 50, created: new Date(submitted.created), settings: settings, metadata: submitted.metadata || {},
        storage: { shamanCheckoutID: "" },
        addTask: function (task) { tasks.push(task); },
    };
    let result;
    try {
        context.__job = job;
        vm.runInContext("compileJob(__job)", context);
        result = { ok: true };
    } catch (err) {
        // goja hands a thrown string or Error back to the Manager as the submission's error
        result = { ok: false, error: err instanceof Error || (err && err.message) ? String(err.message) : String(err) };
    }
    result.jobType = job.jobType;
    result.settings = settings;
    result.printed = printed;
    result.tasks = tasks.map(function (t) {
        return {
            name: t.name, type: t.type, priority: t.priority,
            commands: t.commands.map(function (c) {
                return { name: c.name, parameters: c.parameters, totalStepCount: c.totalStepCount };
            }),
            dependencies: t.dependencies.map(function (d) { return d.name; }),
        };
    });
    return result;
}

try {
    process.stdout.write(JSON.stringify(main(process.argv[2], process.argv[3])) + "\n");
} catch (err) {
    process.stdout.write(JSON.stringify({ ok: false, harness_error: String(err && err.stack || err) }) + "\n");
    process.exitCode = 3;
}
