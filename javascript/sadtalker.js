// "Send to SadTalker": the WebUI moves the selected result image into the SadTalker tab's portrait (the button is
// registered in scripts/sadtalker_tab.py as a paste button whose target tab is "sadtalker"), then calls
// switch_to_sadtalker() to open the tab.

function switch_to_sadtalker() {
    var tab = gradioApp().getElementById("tab_sadtalker");
    var buttons = gradioApp().querySelectorAll("#tabs > .tab-nav > button");
    var found = Array.from(buttons).find(function(button) { return button.textContent.trim() === "SadTalker"; });
    if (!found && tab) {
        var items = Array.from(gradioApp().querySelectorAll("#tabs > .tabitem"));
        found = buttons[items.indexOf(tab)];
    }
    if (found) {
        found.click();
    }
    return Array.from(arguments);
}

// Called by Generate before the run starts (sadtalker_tab.py passes its name to the page as progress_js): the
// WebUI's own progress bar, the one txt2img has, appears above the status box and follows the run by this id,
// which goes to the server with the run; the bar shows the stage text ("SadTalker: render 2/3") and goes away at
// the end.
function sadtalker_follow_progress() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("sadtalker_status"), null, function() {});
    return [id];
}

onUiLoaded(function() {
    ["txt2img", "img2img", "extras"].forEach(function(tab) {
        var button = gradioApp().getElementById(tab + "_send_to_sadtalker");
        if (button) {
            button.title = "Send image to the SadTalker tab";
        }
    });
});
