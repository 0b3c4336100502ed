(function () {
  if (window.__birdclfPage) return; window.__birdclfPage = true;
  var LIMIT_MB = __LIMIT_MB__, SEND_PIXELS = __SEND_PIXELS__, CHECK_S = __CHECK_S__, KEEP_BYTES = 1500000;
  var asleep = false, lastRun = null, config = {};
  try { config = JSON.parse(document.getElementById('jupyter-config-data').textContent); } catch (e) {}
  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }
  function mb(bytes) { return bytes < 1048576 ? Math.max(1, Math.round(bytes / 1024)) + ' KB'
                                               : (bytes / 1048576).toFixed(1) + ' MB'; }
  function say(text, css) {
    var box = document.querySelector('.bc-status');
    if (!box) { alert(text); return; }
    box.textContent = ''; var span = document.createElement('span'); span.className = css || 'bc-failed';
    span.textContent = text; box.appendChild(span);
  }
  function stale(on) {
    var nodes = document.querySelectorAll('.bc-results');
    for (var i = 0; i < nodes.length; i++) nodes[i].classList.toggle('bc-stale', on);
  }
  function sayAsleep() { say('This page went to sleep. Please reload it to identify more photos.'); }
  function showAsleep() {
    if (asleep) return; asleep = true;
    var bar = document.createElement('div'); bar.className = 'bc-asleep'; bar.setAttribute('role', 'alert');
    var p = document.createElement('p');
    p.textContent = 'This page went to sleep after a while without use, to make room for other visitors. ' +
                    'Reload it to identify more photos.';
    var button = document.createElement('button'); button.type = 'button'; button.textContent = 'Reload the page';
    button.onclick = function () { location.reload(); };
    bar.appendChild(p); bar.appendChild(button); document.body.appendChild(bar);
    sayAsleep();
  }
  function checkKernel() {
    if (asleep) return Promise.resolve(false);
    if (!config.kernelId || !window.fetch) return Promise.resolve(true);
    var url = (config.baseUrl || '/') + 'api/kernels/' + config.kernelId;
    return fetch(url, {credentials: 'same-origin', cache: 'no-store'}).then(function (r) {
      if (r.status === 404) { showAsleep(); return false; }
      return true;
    }).catch(function () { return true; });  // offline for a moment: not known to be asleep
  }
  setInterval(checkKernel, CHECK_S * 1000);
  document.addEventListener('visibilitychange', function () { if (!document.hidden) checkKernel(); });
  function shrink(file) {
    if (!window.createImageBitmap || !/^image\/(jpeg|png|webp|bmp|heic|heif)$/i.test(file.type || '')) {
      return Promise.resolve(file);
    }
    return createImageBitmap(file, {imageOrientation: 'from-image'}).then(function (bitmap) {
      var w = bitmap.width, h = bitmap.height, scale = Math.min(1, Math.sqrt(SEND_PIXELS / (w * h)));
      if (scale === 1 && file.size <= KEEP_BYTES) { if (bitmap.close) bitmap.close(); return file; }
      var cw = Math.max(1, Math.floor(w * scale)), ch = Math.max(1, Math.floor(h * scale));
      var canvas = document.createElement('canvas'); canvas.width = cw; canvas.height = ch;
      var ctx = canvas.getContext('2d');
      ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, cw, ch);  // transparency becomes white, as in the kernel
      ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
      ctx.drawImage(bitmap, 0, 0, cw, ch);
      if (bitmap.close) bitmap.close();
      return new Promise(function (resolve) {
        canvas.toBlob(function (blob) {
          resolve(blob && blob.size < file.size
                  ? new File([blob], file.name, {type: 'image/jpeg', lastModified: file.lastModified}) : file);
        }, 'image/jpeg', 0.92);
      });
    }).catch(function () { return file; });  // the browser cannot read it: the kernel says what is wrong
  }
  function tooBig(files) {
    var total = 0;
    for (var i = 0; i < files.length; i++) total += files[i].size;
    if (total <= LIMIT_MB * 1048576) return null;
    var what = files.length > 1 ? 'These ' + files.length + ' photos come to ' : files[0].name + ' is ';
    var before = document.querySelector('.bc-pending') ? ' The photos chosen before are still ready below.' : '';
    return what + Math.round(total / 1048576) + ' MB; the limit is ' + LIMIT_MB + ' MB per upload. ' +
           'Please choose fewer or smaller photos.' + before;
  }
  var add = HTMLInputElement.prototype.addEventListener;
  HTMLInputElement.prototype.addEventListener = function (type, listener, options) {
    if (type === 'change' && this.type === 'file' && typeof listener === 'function') {
      var input = this, original = listener;
      listener = function (event) {
        var self = this, files = Array.prototype.slice.call(input.files || []);
        if (!files.length) return;
        if (asleep) { input.value = ''; sayAsleep(); return; }
        say('Preparing ' + plural(files.length, 'photo') + '…', 'bc-busy'); stale(true);
        Promise.all([checkKernel(), Promise.all(files.map(shrink))]).then(function (done) {
          if (!done[0]) { input.value = ''; stale(false); sayAsleep(); return; }
          var ready = done[1];
          if (ready.some(function (f, i) { return f !== files[i]; })) {
            try {
              var dt = new DataTransfer();
              ready.forEach(function (f) { dt.items.add(f); });
              input.files = dt.files;
            } catch (e) {}  // no DataTransfer here: the originals go, and the kernel shrinks them
          }
          var sent = Array.prototype.slice.call(input.files || []), problem = tooBig(sent);
          if (problem) { say(problem); input.value = ''; stale(false); return; }
          var bytes = sent.reduce(function (s, f) { return s + f.size; }, 0);
          say('Sending ' + plural(sent.length, 'photo') + ' (' + mb(bytes) + ')…', 'bc-busy');
          original.call(self, event);
        });
      };
    }
    return add.call(this, type, listener, options);
  };
  function tidy() {
    var buttons = document.querySelectorAll('button.widget-upload');  // "Choose photos (0)": the count misleads
    for (var i = 0; i < buttons.length; i++) {
      for (var node = buttons[i].firstChild; node; node = node.nextSibling) {
        var text = node.nodeType === 3 ? node.nodeValue : '';
        if (/ \(\d+\)$/.test(text)) node.nodeValue = text.replace(/ \(\d+\)$/, '');
      }
    }
    var results = document.querySelector('.bc-results[data-final]');
    if (results && results.getAttribute('data-run') !== lastRun) {
      lastRun = results.getAttribute('data-run');
      var first = results.querySelector('.bc-card');
      if (first) {
        var top = first.getBoundingClientRect().top;
        if (top < 0 || top > window.innerHeight * 0.5) first.scrollIntoView({behavior: 'smooth', block: 'start'});
      }
    }
  }
  new MutationObserver(tidy).observe(document.body, {childList: true, subtree: true, characterData: true});
  tidy();
})();
