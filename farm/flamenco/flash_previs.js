// FLASH Previs job type for Flamenco 3 (docs/farm.md): every shot of a .blend animated by
// the worker's Blender with the FLASH Previs extension, one task per shot so the farm's GPU
// workers run them side by side, then one task that saves a copy of the .blend with every
// take imported from the takes on disk.
//
// Install: copy this file into the Manager's `scripts/` folder; the job type is named after
// the file ("flash-previs"). Flamenco runs it in its own JavaScript engine: keep to ES5.1
// and what Flamenco's bundled scripts use (no require, no console, no Node modules).

const JOB_TYPE = {
    label: "FLASH Previs",
    description: "Animate shots with FLASH Previs: one task per shot, then a copy of the .blend with every take",
    settings: [
        // Which shots.
        { key: "shots", type: "string", required: true, default: "All cameras",
          choices: ["All cameras", "Marker cameras", "Named cameras"], visible: "submission",
          description: "All cameras of the scene; the cameras bound to timeline markers (each at its marker's " +
                       "frame); or the cameras named below" },
        { key: "camera_names", type: "string", default: "", visible: "submission",
          description: "Named cameras: their names, separated by commas" },

        // The take.
        { key: "action", type: "string", default: "", visible: "submission",
          description: "Preset id or name, or a trained action (trained:NAME). Empty: the scene's FLASH action" },
        { key: "motion", type: "string", default: "", visible: "submission",
          description: "What moves the person: action, rig:ARMATURE or clip:/path/on/the/workers.mp4. " +
                       "Empty: the scene's Motion setting" },
        { key: "depth", type: "string", default: "Scene setting", choices: ["Scene setting", "On", "Off"],
          visible: "submission", description: "Also steer by each shot's depth from its camera" },
        { key: "seed", type: "int32", default: -1, propargs: { min: -1 }, visible: "submission",
          description: "-1: the scene's FLASH seed" },
        { key: "clip_frames", type: "int32", default: 0, propargs: { min: 0 }, visible: "submission",
          description: "Clip frames; 0: the scene's FLASH setting" },

        // Output.
        { key: "output_root", type: "string", subtype: "dir_path", required: true, visible: "submission",
          description: "Shared folder the take folders go to, as the workers see it; it must exist on them" },
        { key: "mp4", type: "bool", default: false, visible: "submission",
          description: "Also write flash.mp4 next to each take's frames" },
        { key: "save_copy", type: "bool", default: true, visible: "submission",
          description: "At the end, save a copy of the .blend with every take imported" },
        { key: "flash_batch", type: "string", default: "{flash_batch}", visible: "submission",
          description: "flash_batch.py in the workers' FLASH Previs extension (a Manager variable by default)" },

        // Filled in at submission, in the artist's Blender.
        { key: "blendfile", type: "string", required: true, visible: "web",
          description: "Path of the .blend to animate" },
        { key: "scene", type: "string", required: true, eval: "C.scene.name", visible: "hidden" },
        { key: "scene_cameras", type: "string", required: true, visible: "hidden",
          eval: "__import__('json').dumps(sorted(o.name for o in C.scene.objects if o.type == 'CAMERA'))" },
        { key: "scene_markers", type: "string", required: true, visible: "hidden",
          eval: "__import__('json').dumps([[m.frame, m.name, m.camera.name if m.camera else None] " +
                "for m in C.scene.timeline_markers])" },
    ]
};

const RECORDS_FOLDER = "flash-jobs";  // under the output root: each job's take records and its copy

function compileJob(job) {
    const settings = job.settings;
    const scene = settings.scene;
    const root = checkedOutputRoot(settings.output_root);
    const shots = chooseShots(settings, scene);
    const jobFolder = path.join(root, RECORDS_FOLDER, fileSafe(job.name) + "_" + formatTimestampLocal(job.created));
    settings.job_folder = jobFolder;  // shown with the job: where its records and copy are
    print("FLASH Previs:", shots.length, "shots of", settings.blendfile, "->", root);

    const takeArgs = takeArguments(settings, root);
    const shotTasks = [];
    const records = [];
    for (var i = 0; i < shots.length; i++) {
        var shot = shots[i];
        var record = path.join(jobFolder, "shot-" + pad(i + 1) + ".json");
        var task = author.Task("shot-" + pad(i + 1) + " " + shot.label, "blender");
        task.addCommand(flashBatch(settings, ["--scene", scene].concat(shot.args, takeArgs, ["--record", record])));
        shotTasks.push(task);
        records.push(record);
        job.addTask(task);
    }
    if (settings.save_copy) {
        const copy = path.join(jobFolder, path.stem(settings.blendfile) + "_flash.blend");
        const saveTask = author.Task("save-copy", "blender");
        saveTask.addCommand(flashBatch(settings, ["--scene", scene, "--import-takes"].concat(
            records, ["--save", copy, "--save-numbered"])));
        for (var j = 0; j < shotTasks.length; j++) {
            saveTask.addDependency(shotTasks[j]);
        }
        job.addTask(saveTask);
    }
}

// The worker's Blender on flash_batch.py (Blender's own -b comes from {blenderArgs}).
function flashBatch(settings, scriptArgs) {
    return author.Command("blender-render", {
        exe: "{blender}",
        exeArgs: "{blenderArgs}",
        argsBefore: [],
        blendfile: settings.blendfile,
        args: ["--python-exit-code", "1", "-P", settings.flash_batch, "--"].concat(scriptArgs),
    });
}

function checkedOutputRoot(root) {
    root = (root || "").trim();
    if (!root) {
        throw "FLASH Previs: no output root: choose the shared folder the takes go to";
    }
    if (root.indexOf("//") === 0) {
        throw "FLASH Previs: the output root " + root + " is relative to the .blend: choose the shared folder " +
              "as the workers see it (an absolute path)";
    }
    // Absolute: /…, C:\…, \\server\…, or a Flamenco variable such as {jobs}/…
    if (!/^(\/|[A-Za-z]:[\\\/]|\\\\|\{[^}]+\})/.test(root)) {
        throw "FLASH Previs: the output root " + root + " is not an absolute path: choose the shared folder " +
              "as the workers see it";
    }
    return root;
}

function parsedList(settings, key) {
    var value;
    try {
        value = JSON.parse(settings[key] || "");
    } catch (err) {
        value = null;
    }
    if (!(value instanceof Array)) {
        throw "FLASH Previs: the job has no " + key + " list: submit it from Blender with the Flamenco add-on";
    }
    return value;
}

// [{label, args}] for each task, or a throw that names the fix.
function chooseShots(settings, scene) {
    const cameras = parsedList(settings, "scene_cameras");
    if (settings.shots === "All cameras") {
        if (cameras.length === 0) {
            throw "FLASH Previs: scene '" + scene + "' has no cameras: add one, or choose other shots";
        }
        return cameras.map(function (name) { return { label: name, args: ["--camera", name] }; });
    }
    if (settings.shots === "Marker cameras") {
        const names = [];
        const labels = {};
        parsedList(settings, "scene_markers").forEach(function (marker) {
            if (marker[2] === null || marker[2] === undefined) {
                return;
            }
            if (!(marker[1] in labels)) {  // one task for markers of the same name: flash_batch runs them all
                names.push(marker[1]);
                labels[marker[1]] = [];
            }
            labels[marker[1]].push(marker[2]);
        });
        if (names.length === 0) {
            throw "FLASH Previs: no timeline marker of scene '" + scene + "' has a camera bound " +
                  "(Timeline: Marker > Bind Camera to Markers, Ctrl+B)";
        }
        return names.map(function (name) {
            return { label: name + " (" + labels[name].join(", ") + ")", args: ["--marker", name] };
        });
    }
    if (settings.shots === "Named cameras") {
        const named = splitNames(settings.camera_names);
        if (named.length === 0) {
            throw "FLASH Previs: Named cameras, but no camera names: list them, separated by commas";
        }
        named.forEach(function (name) {
            if (cameras.indexOf(name) < 0) {
                throw "FLASH Previs: no camera named '" + name + "' in scene '" + scene + "' (" +
                      (cameras.length ? "its cameras: " + cameras.join(", ") : "it has no cameras") + ")";
            }
        });
        return named.map(function (name) { return { label: name, args: ["--camera", name] }; });
    }
    throw "FLASH Previs: unknown shots choice '" + settings.shots + "'";
}

function splitNames(text) {
    const names = [];
    (text || "").split(",").forEach(function (part) {
        const name = part.trim();
        if (name && names.indexOf(name) < 0) {
            names.push(name);
        }
    });
    return names;
}

// The take settings every shot gets (only what the job sets: the rest is the scene's).
function takeArguments(settings, root) {
    const args = [];
    const action = (settings.action || "").trim();
    if (action) {
        args.push("--action", action);
    }
    const motion = (settings.motion || "").trim();
    if (motion) {
        if (!(motion === "action" || /^(rig|clip):./.test(motion))) {
            throw "FLASH Previs: motion '" + motion + "' is not action, rig:ARMATURE or clip:PATH";
        }
        args.push("--motion", motion);
    }
    if (settings.depth === "On") {
        args.push("--depth");
    } else if (settings.depth === "Off") {
        args.push("--no-depth");
    }
    const seed = wholeNumber(settings.seed, "seed", -1);
    if (seed >= 0) {
        args.push("--seed", String(seed));
    }
    const frames = wholeNumber(settings.clip_frames, "clip_frames", 0);
    if (frames > 0) {
        args.push("--frames", String(frames));
    }
    if (settings.mp4) {
        args.push("--mp4");
    }
    args.push("--out", root, "--out-must-exist");
    return args;
}

function wholeNumber(value, key, least) {
    if (value === undefined || value === null || value === "") {
        return least;
    }
    const number = Number(value);
    if (isNaN(number) || Math.floor(number) !== number || number < least) {
        throw "FLASH Previs: " + key + " must be a whole number of at least " + least + ", not " + value;
    }
    return number;
}

// A job name as one folder name: path separators and characters Windows refuses become "_"
// (letters of any script stay).
function fileSafe(text) {
    const cleaned = String(text || "").replace(/[\/\\:*?"<>|\u0000-\u001f]+/g, "_").replace(/^[.\s]+|[.\s]+$/g, "");
    return cleaned || "job";
}

function pad(number) {
    return number < 10 ? "0" + number : String(number);
}
